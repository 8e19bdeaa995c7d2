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
