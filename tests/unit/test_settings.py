import tomllib
from pathlib import Path

import pytest

from nightrec.settings import SettingsError, load_settings


def test_local_settings_resolve_paths_against_home():
    settings = load_settings("local", {})
    assert settings.spark.master == "local[2]"
    assert settings.path("lake") == str(settings.home / "var" / "lake")
    assert settings.table("silver/interactions").endswith("var/lake/silver/interactions")


def test_environment_overrides_nested_keys_and_parses_json_values():
    settings = load_settings("local", {
        "NIGHTREC_REDIS__URL": "redis://:secret@cache:6380/2",
        "NIGHTREC_MODEL__TOP_K": "32",
        "NIGHTREC_EVENTS__WEIGHTS": '{"play": 1.5}',
        "NIGHTREC_PATHS__LAKE": "s3a://bucket/lake",
    })
    assert settings.redis.url == "redis://:secret@cache:6380/2"
    assert settings.model.top_k == 32
    assert settings.events.weights == {"play": 1.5}
    assert settings.path("lake") == "s3a://bucket/lake"


def test_bad_values_are_rejected_with_the_field_name():
    with pytest.raises(SettingsError, match="max_bad_fraction"):
        load_settings("local", {"NIGHTREC_VALIDATION__MAX_BAD_FRACTION": "1.5"})
    with pytest.raises(SettingsError, match="event weights must be > 0"):
        load_settings("local", {"NIGHTREC_EVENTS__WEIGHTS": '{"view": 0}'})
    with pytest.raises(SettingsError, match="rnak"):
        load_settings("local", {"NIGHTREC_MODEL__RNAK": "3"})


def test_unknown_section_or_environment_is_an_error():
    with pytest.raises(SettingsError, match="unknown settings section 'nosuch'"):
        load_settings("local", {"NIGHTREC_NOSUCH__KEY": "1"})
    with pytest.raises(SettingsError, match="'staging'"):
        load_settings("staging", {})


def test_cluster_settings_load():
    assert load_settings("cluster", {}).spark.master.startswith("spark://")


def test_retention_settings_default_and_validate():
    for env in ("local", "cluster"):
        settings = load_settings(env, {})
        assert settings.lake.retention_days == 7 and settings.mlflow.keep_versions == 20
    assert load_settings("local", {"NIGHTREC_LAKE__RETENTION_DAYS": "30"}).lake.retention_days == 30
    with pytest.raises(SettingsError, match="retention_days"):
        load_settings("local", {"NIGHTREC_LAKE__RETENTION_DAYS": "0"})
    with pytest.raises(SettingsError, match="keep_versions"):
        load_settings("local", {"NIGHTREC_MLFLOW__KEEP_VERSIONS": "-1"})


ENVIRONMENTS = sorted(p.stem for p in (Path(__file__).resolve().parents[2] / "conf").glob("*.toml")
                      if p.stem != "base")


def _leaves(table: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in table.items():
        if isinstance(value, dict):
            out.update(_leaves(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_each_environment_file_holds_only_what_differs_from_base(env):
    conf = Path(__file__).resolve().parents[2] / "conf"
    base = _leaves(tomllib.loads((conf / "base.toml").read_text()))
    overlay = _leaves(tomllib.loads((conf / f"{env}.toml").read_text()))
    assert overlay, f"conf/{env}.toml is empty"
    repeated = {key for key, value in overlay.items() if key in base and base[key] == value}
    assert not repeated, f"conf/{env}.toml repeats conf/base.toml: {sorted(repeated)}"
    load_settings(env, {})  # and base + overlay is complete and valid


def test_an_overlay_table_merges_into_base_key_by_key(tmp_path):
    conf = Path(__file__).resolve().parents[2] / "conf"
    (tmp_path / "base.toml").write_text((conf / "base.toml").read_text())
    (tmp_path / "staging.toml").write_text('[auth.rate_limits]\nadmin = { per_second = 1, burst = 2 }\n'
                                           '[spark.conf]\n"spark.cores.max" = 8\n')
    settings = load_settings("staging", {"NIGHTREC_CONF_DIR": str(tmp_path)})
    assert settings.auth.rate_limits["admin"].burst == 2
    assert settings.auth.rate_limits["read"].burst == 2000      # from base
    assert settings.auth.enabled is True                         # base's default, untouched
    assert settings.spark.conf == {"spark.cores.max": 8}
    assert settings.spark.master == "local[2]"


def test_a_key_missing_from_base_is_named(tmp_path):
    conf = Path(__file__).resolve().parents[2] / "conf"
    (tmp_path / "base.toml").write_text((conf / "base.toml").read_text().replace('seed = 42\n', ''))
    (tmp_path / "local.toml").write_text("")
    with pytest.raises(SettingsError, match=r"model\.seed"):
        load_settings("local", {"NIGHTREC_CONF_DIR": str(tmp_path)})
