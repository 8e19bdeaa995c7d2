"""Registered versions in the arrays + manifest format, through real MLflow (sqlite store, local
artifacts): nightrec reads them back exactly, MLflow's pyfunc serves them, nothing is pickled, and a
version in the old pickled format is refused with a message that says so."""

from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from conftest import settings_environ
from helpers import tiny_bundle
from nightrec.errors import PermanentError
from nightrec.modeling import registry, tracking
from nightrec.modeling.artifact import UnsupportedArtifact
from nightrec.settings import load_settings

NAME = "artifacts"


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    settings = load_settings("local", settings_environ(tmp_path_factory.mktemp("mlflow")))
    return tracking.configure(settings)


@pytest.fixture(scope="module")
def version(experiment):
    with mlflow.start_run(experiment_id=experiment):
        return registry.log_candidate_model(served(), NAME, {registry.RECIPE_TAG: '{"candidate": "popularity"}'},
                                            holdout_free=tiny_bundle(5, 2.0))


def served():
    bundle = tiny_bundle(8)
    bundle.components["popularity"].item_scores[:] = np.arange(8, 0, -1)  # item 1 best
    return bundle


def test_a_version_reads_back_as_logged(version):
    loaded = registry.load_version(NAME, version)
    np.testing.assert_array_equal(loaded.item_ids, served().item_ids)
    np.testing.assert_array_equal(loaded.components["popularity"].item_scores, np.arange(8, 0, -1))
    holdout_free = registry.load_holdout_free(NAME, version)
    assert len(holdout_free.item_ids) == 5 and not registry.is_pickled(NAME, version)


def test_mlflow_pyfunc_serves_the_version_without_pickles(version):
    model = mlflow.pyfunc.load_model(f"models:/{NAME}/{version}")
    users = pd.DataFrame({"user_id": [1, 2], "items": [[1, 2], [5]], "strengths": [[1.0, 1.0], [1.0]],
                          "recency": [[1.0, 1.0], [1.0]]})
    answer = model.predict(users, params={"k": 3})
    assert [list(ids) for ids in answer["item_ids"]] == [[3, 4, 5], [1, 2, 3]]  # best unseen first
    source = MlflowClient().get_model_version(NAME, version).source.removeprefix("models:/")
    folder = Path(MlflowClient().get_logged_model(source).artifact_location.removeprefix("file://"))
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    assert "artifacts/bundle/manifest.json" in files and "artifacts/holdout_free/arrays.npz" in files
    assert not [f for f in files if f.endswith((".pkl", ".pickle"))], files


class Legacy(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        return model_input


def test_a_pickled_version_is_refused_naming_the_format(experiment, version, tmp_path):
    pickled = tmp_path / "bundle.pkl"
    pickled.write_bytes(b"\x80\x05N.")
    with mlflow.start_run(experiment_id=experiment):
        info = mlflow.pyfunc.log_model(name="model", python_model=Legacy(), artifacts={"bundle": str(pickled)},
                                       registered_model_name=NAME)
    old = str(info.registered_model_version)
    client = MlflowClient()
    client.set_model_version_tag(NAME, old, registry.RECIPE_TAG, '{"candidate": "popularity"}')
    assert registry.is_pickled(NAME, old)
    with pytest.raises(UnsupportedArtifact, match="format version 0"):
        registry.load_version(NAME, old)
    assert registry.load_holdout_free(NAME, old) is None

    registry.set_aliases(NAME, version, None)  # a champion of this format ...
    client.set_model_version_tag(NAME, version, registry.REPLACED_TAG, old)  # ... that replaced a pickled one
    with pytest.raises(PermanentError, match="pickled model"):
        registry.rollback(NAME)
    assert registry.current_champion(NAME).version == version
