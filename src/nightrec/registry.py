"""Candidates in the MLflow model registry: one pyfunc model per candidate, the promotion gate,
the `champion` / `challenger` aliases and rollback.

Every candidate of a night becomes a version of one registered model, tagged with its family,
night and holdout NDCG. The champion's recipe (family + hyperparameters + blend weights) is stored
with it, so the next night can refit it on the same data as the new candidates: the gate compares
both on the same holdout.
"""

from __future__ import annotations

import json
import pickle
import tempfile
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pyarrow as pa
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from nightrec.errors import PermanentError
from nightrec.scoring import Bundle, user_block

CHAMPION = "champion"
CHALLENGER = "challenger"
RECIPE_TAG = "recipe"                 # json: {"family": ..., "params": ..., "weights": ...}
REPLACED_TAG = "replaced_version"     # on a champion: the champion it replaced (rollback target)


class RecommenderModel(mlflow.pyfunc.PythonModel):
    """pyfunc: DataFrame(user_id, items, strengths, recency) -> DataFrame(user_id, item_ids, scores).

    Loadable with mlflow.pyfunc.load_model(...) wherever nightrec is installed; params={"k": 10}.
    """

    def load_context(self, context):
        self.bundle = load_bundle(context.artifacts["bundle"])

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        k = int((params or {}).get("k", 100))
        batch = pa.RecordBatch.from_pandas(model_input[["user_id", "items", "strengths", "recency"]], preserve_index=False)
        ranked = self.bundle.ranked(user_block(batch, self.bundle.item_ids), k)
        return ranked.to_pandas()


def save_bundle(bundle: Bundle, path: Path) -> Path:
    with open(path, "wb") as handle:
        pickle.dump(bundle, handle, protocol=pickle.HIGHEST_PROTOCOL)
    return path


def load_bundle(path: str | Path) -> Bundle:
    with open(path, "rb") as handle:
        return pickle.load(handle)


def log_candidate_model(bundle: Bundle, registered_model: str, tags: dict[str, str]) -> str:
    """Log the bundle as this run's `model` and register it; returns the new version."""
    with tempfile.TemporaryDirectory() as folder:
        path = save_bundle(bundle, Path(folder) / "bundle.pkl")
        info = mlflow.pyfunc.log_model(
            name="model", python_model=RecommenderModel(), artifacts={"bundle": str(path)},
            registered_model_name=registered_model,
            pip_requirements=[f"numpy=={np.__version__}", f"scipy=={_version('scipy')}",
                              f"pandas=={pd.__version__}", f"pyarrow=={pa.__version__}"])
    version = str(info.registered_model_version)
    client = MlflowClient()
    for key, value in tags.items():
        client.set_model_version_tag(registered_model, version, key, value)
    return version


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


@dataclass
class Champion:
    version: str
    recipe: dict


def current_champion(registered_model: str) -> Champion | None:
    client = MlflowClient()
    try:
        found = client.get_model_version_by_alias(registered_model, CHAMPION)
    except MlflowException:
        return None
    recipe = json.loads(found.tags.get(RECIPE_TAG, "null"))
    return Champion(str(found.version), recipe) if recipe else None


def load_version(registered_model: str, version: str) -> Bundle:
    model = mlflow.pyfunc.load_model(f"models:/{registered_model}/{version}")
    return model.unwrap_python_model().bundle


def load_champion(registered_model: str) -> tuple[Bundle, str]:
    champion = current_champion(registered_model)
    if champion is None:
        raise PermanentError(f"no {registered_model}@{CHAMPION} in MLflow: run train first")
    return load_version(registered_model, champion.version), f"{registered_model}/{champion.version}"


@dataclass
class Decision:
    promote: bool
    reason: str


def gate(candidate: str, candidate_ndcg: float, champion_ndcg: float | None, tolerance: float,
         metric: str = "ndcg_at_10") -> Decision:
    """Promote unless the candidate is worse than the champion, on the same holdout, by more than
    the tolerance."""
    if champion_ndcg is None:
        return Decision(True, f"{candidate}: no champion yet")
    if candidate_ndcg >= champion_ndcg - tolerance:
        return Decision(True, f"{candidate} {metric} {candidate_ndcg:.4f} vs champion {champion_ndcg:.4f} "
                              f"(tolerance {tolerance}): promoted")
    return Decision(False, f"{candidate} {metric} {candidate_ndcg:.4f} is below champion {champion_ndcg:.4f} "
                           f"by more than {tolerance}: champion kept")


def set_aliases(registered_model: str, promoted: str | None, challenger: str | None) -> None:
    """Move `champion` to `promoted` (remembering the one it replaces) and `challenger` to the runner-up."""
    client = MlflowClient()
    if promoted is not None:
        previous = current_champion(registered_model)
        if previous is not None and previous.version != promoted:
            client.set_model_version_tag(registered_model, promoted, REPLACED_TAG, previous.version)
        client.set_registered_model_alias(registered_model, CHAMPION, promoted)
    if challenger is not None:
        client.set_registered_model_alias(registered_model, CHALLENGER, challenger)


def rollback(registered_model: str, to_version: str | None = None) -> tuple[str, str]:
    """Point `champion` back at `to_version`, or at the version the current champion replaced.
    Returns (old champion, new champion)."""
    client = MlflowClient()
    current = current_champion(registered_model)
    if current is None:
        raise PermanentError(f"{registered_model} has no {CHAMPION}: nothing to roll back")
    target = to_version or client.get_model_version(registered_model, current.version).tags.get(REPLACED_TAG)
    if not target:
        raise PermanentError(f"{registered_model}/{current.version} replaced no earlier champion: "
                             f"name the version to roll back to (--to)")
    try:
        found = client.get_model_version(registered_model, target)
    except MlflowException as error:
        raise PermanentError(f"{registered_model} has no version {target}") from error
    if RECIPE_TAG not in found.tags:
        raise PermanentError(f"{registered_model}/{target} is not a nightrec candidate (no {RECIPE_TAG} tag)")
    client.set_registered_model_alias(registered_model, CHAMPION, target)
    client.set_model_version_tag(registered_model, target, "rolled_back_from", current.version)
    return current.version, target
