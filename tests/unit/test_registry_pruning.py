"""Pruning old model versions: real MLflow (sqlite store, local artifacts) in a temp folder."""

import json
import shutil
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from conftest import settings_environ
from helpers import tiny_bundle
from nightrec.modeling import registry, tracking
from nightrec.settings import load_settings


def model_folder(client: MlflowClient, name: str, version: str) -> Path:
    """Where the version's logged model keeps its files: <experiment>/models/<model id>/artifacts."""
    model_id = client.get_model_version(name, version).source.removeprefix("models:/")
    return Path(client.get_logged_model(model_id).artifact_location.removeprefix("file://"))


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    """One sqlite store for the module (creating it is the slow part); each test registers its own model."""
    settings = load_settings("local", settings_environ(tmp_path_factory.mktemp("mlflow")))
    return tracking.configure(settings)


@pytest.fixture
def registered(experiment, request):
    """Seven nights, one version each: 2 was champion, then 6 replaced it; 7 lost the gate
    (challenger); an analyst pinned 1 with an alias of their own."""
    name = request.node.name.removeprefix("test_")[:60]
    client = MlflowClient()
    runs = {}
    for night in range(1, 8):
        with mlflow.start_run(experiment_id=experiment, run_name=f"night-{night}") as run:
            version = registry.log_candidate_model(tiny_bundle(2000 * night), name, {
                registry.RECIPE_TAG: json.dumps({"candidate": "als", "params": {"rank": night}})})
        runs[version] = run.info.run_id
    registry.set_aliases(name, "2", None)
    registry.set_aliases(name, "6", "7")  # 6 remembers 2 as the version it replaced
    client.set_registered_model_alias(name, "audit", "1")
    return name, client, runs


def test_pruning_keeps_aliased_versions_and_the_rollback_target(registered):
    name, client, runs = registered
    folders = {v: model_folder(client, name, v) for v in map(str, range(1, 8))}
    assert all(folder.is_dir() for folder in folders.values())
    doomed_bytes = folder_bytes(folders["3"]) + folder_bytes(folders["4"])

    pruned = registry.prune_versions(name, keep=1)

    # 1 (audit), 2 (rollback target), 6 (champion), 7 (challenger) stay; of 3, 4, 5 the newest one.
    assert pruned.deleted == ["3", "4"] and pruned.kept == ["1", "2", "5", "6", "7"]
    assert pruned.bytes_freed == doomed_bytes > 0
    left = sorted(str(v.version) for v in client.search_model_versions(f"name = '{name}'"))
    assert left == pruned.kept
    for version, folder in folders.items():
        # the logged model's folder goes entirely, not only its files
        assert folder.parent.exists() == (version in pruned.kept), version
    logged = client.search_logged_models([client.get_run(runs["1"]).info.experiment_id])
    assert {m.model_id for m in logged if m.source_run_id in runs.values()} == \
        {client.get_model_version(name, v).source.removeprefix("models:/") for v in pruned.kept}
    assert client.get_run(runs["3"]).info.lifecycle_stage == "active"  # runs, metrics and reports stay

    assert registry.rollback(name) == ("6", "2")  # the rollback target survived, files included
    assert len(registry.load_version(name, "2").item_ids) == 4000
    assert registry.prune_versions(name, keep=1).deleted == ["5"]  # 6 lost its alias: now the newest unaliased


def test_pruning_reports_the_bytes_it_freed_and_deletes_only_past_keep(registered):
    name, client, _ = registered
    folders = {v: model_folder(client, name, v) for v in ("3", "4", "5")}
    sizes = {v: folder_bytes(folder) for v, folder in folders.items()}

    assert registry.prune_versions(name, keep=3).deleted == []
    # An earlier pruning died after deleting version 3's files and logged model, before the version.
    shutil.rmtree(folders["3"].parent)
    client.delete_logged_model(client.get_model_version(name, "3").source.removeprefix("models:/"))

    pruned = registry.prune_versions(name, keep=0)

    assert pruned.deleted == ["3", "4", "5"]
    assert pruned.bytes_freed == sizes["4"] + sizes["5"]
    assert not any(folder.exists() for folder in folders.values())
    assert registry.prune_versions("no-such-model", keep=0) == registry.Pruned([], [], 0)
