"""Candidates in the MLflow model registry: one pyfunc model per candidate, the promotion gate,
the `champion` / `challenger` aliases and rollback.

Every candidate of a night becomes a version of one registered model, tagged with its family,
night and holdout NDCG. The champion's recipe (family + hyperparameters + blend weights) is stored
with it, so the next night can refit it on the same data as the new candidates: the gate compares
both on the same holdout.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
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
from nightrec.modeling.artifact import UnsupportedArtifact, load_bundle, save_bundle
from nightrec.modeling.recipe import Recipe
from nightrec.modeling.scoring import Bundle, user_block
from nightrec.settings import Settings, resolve

CHAMPION = "champion"
CHALLENGER = "challenger"
RECIPE_TAG = "recipe"                 # json: {"candidate": ..., "params": ..., "weights": ...}
REPLACED_TAG = "replaced_version"     # on a champion: the champion it replaced (rollback target)
TUNED_RECIPE_TAG = "tuned_recipe"     # on the registered model: the recipe the latest tuning chose
TUNED_RUN_TAG = "tuned_run_id"        # ... and the MLflow run that chose it
SCORING_TAG = "scoring"               # on a version: how its latest lists were scored (exact or retrieved)
DEFAULT_RECIPE = "models/default_recipe.toml"

log = logging.getLogger("nightrec.registry")


class RecommenderModel(mlflow.pyfunc.PythonModel):
    """pyfunc: DataFrame(user_id, items, strengths, recency) -> DataFrame(user_id, item_ids, scores).

    Loadable with mlflow.pyfunc.load_model(...) wherever nightrec is installed; params={"k": 10}.
    Logged as code (nightrec/modeling/pyfunc_model.py), not pickled. Its artifacts are two model
    folders in the arrays + manifest format (nightrec.modeling.artifact): `bundle` is what is served
    (fit on the whole window); `holdout_free` is the same recipe fit on its night's data without the
    holdout: what later nights' gates compare with, never having seen the items they hold out.
    nightrec itself reads those folders directly, without this class.
    """

    def load_context(self, context):
        self.bundle = load_bundle(context.artifacts["bundle"])

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        k = int((params or {}).get("k", 100))
        batch = pa.RecordBatch.from_pandas(model_input[["user_id", "items", "strengths", "recency"]],
                                           preserve_index=False)
        ranked = self.bundle.ranked(user_block(batch, self.bundle.item_ids), k)
        return ranked.to_pandas()


def log_candidate_model(bundle: Bundle, registered_model: str, tags: dict[str, str],
                        holdout_free: Bundle | None = None) -> str:
    """Log the bundle (and the holdout-free fit of the same recipe) as this run's `model` and
    register it; returns the new version."""
    with tempfile.TemporaryDirectory() as folder:
        artifacts = {"bundle": str(save_bundle(bundle, Path(folder) / "bundle"))}
        if holdout_free is not None:
            artifacts["holdout_free"] = str(save_bundle(holdout_free, Path(folder) / "holdout_free"))
        info = mlflow.pyfunc.log_model(
            name="model", python_model=str(Path(__file__).with_name("pyfunc_model.py")), artifacts=artifacts,
            signature=_signature(),
            registered_model_name=registered_model,
            pip_requirements=[f"numpy=={np.__version__}", f"scipy=={_version('scipy')}",
                              f"pandas=={pd.__version__}", f"pyarrow=={pa.__version__}"])
    version = str(info.registered_model_version)
    client = MlflowClient()
    for key, value in tags.items():
        client.set_model_version_tag(registered_model, version, key, value)
    return version


def _signature():
    """What the pyfunc takes and answers; params={"k": ...} reaches predict only when the signature names it."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Array, ColSpec, ParamSchema, ParamSpec, Schema

    return ModelSignature(
        inputs=Schema([ColSpec("long", "user_id"), ColSpec(Array("long"), "items"),
                       ColSpec(Array("double"), "strengths"), ColSpec(Array("double"), "recency")]),
        outputs=Schema([ColSpec("integer", "user_id"), ColSpec(Array("integer"), "item_ids"),
                        ColSpec(Array("float"), "scores")]),
        params=ParamSchema([ParamSpec("k", "long", 100)]))


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


@dataclass
class Champion:
    version: str
    recipe: dict
    ds: str | None = None   # the night it was fit on


def _absent(error: MlflowException) -> bool:
    """True when MLflow says the thing asked for does not exist (not: the server failed)."""
    return error.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")


def current_champion(registered_model: str) -> Champion | None:
    client = MlflowClient()
    try:
        found = client.get_model_version_by_alias(registered_model, CHAMPION)
    except MlflowException as error:
        if _absent(error):
            return None
        raise
    recipe = json.loads(found.tags.get(RECIPE_TAG, "null"))
    return Champion(str(found.version), recipe, found.tags.get("ds")) if recipe else None


def load_version(registered_model: str, version: str, which: str = "bundle") -> Bundle:
    """A version's served bundle (or its holdout-free fit), read from its model folder."""
    repository = _repository(registered_model, version)
    names = _artifact_names(repository)
    if which not in names:
        if _pickled(names, which):
            raise UnsupportedArtifact(pickled_message(registered_model, version))
        raise UnsupportedArtifact(f"{registered_model}/{version} has no {which} model folder")
    with tempfile.TemporaryDirectory() as folder:
        return load_bundle(Path(repository.download_artifacts(f"artifacts/{which}", folder)))


def is_pickled(registered_model: str, version: str) -> bool:
    """True for a version saved by nightrec before the arrays + manifest format (format version 0),
    which this nightrec cannot load."""
    return _pickled(_artifact_names(_repository(registered_model, version)), "bundle")


def pickled_message(registered_model: str, version: str) -> str:
    return (f"{registered_model}/{version} holds a pickled model (format version 0, from nightrec before the arrays "
            f"+ manifest format), which this nightrec does not load")


def _repository(registered_model: str, version: str):
    from mlflow.store.artifact.models_artifact_repo import ModelsArtifactRepository

    return ModelsArtifactRepository(f"models:/{registered_model}/{version}")


def _artifact_names(repository) -> set[str]:
    return {Path(f.path).name for f in repository.list_artifacts("artifacts")}


def _pickled(names: set[str], which: str) -> bool:
    return f"{which}.pkl" in names and which not in names


def load_holdout_free(registered_model: str, version: str) -> Bundle | None:
    """The version's recipe as fit on its night without the holdout (what promotion gates compare);
    None for versions registered without one, or in a format this nightrec does not read."""
    try:
        return load_version(registered_model, version, "holdout_free")
    except UnsupportedArtifact:
        return None


def load_champion(registered_model: str) -> tuple[Bundle, str]:
    champion = current_champion(registered_model)
    if champion is None:
        raise PermanentError(f"no {registered_model}@{CHAMPION} in MLflow: run train first")
    return load_version(registered_model, champion.version), f"{registered_model}/{champion.version}"


def record_scoring(model_version: str, scoring: str, ds: dt.date) -> None:
    """On the version ("name/version"): how the night of ds scored its lists. Information only:
    a registry that refuses it is logged, and the lists written stand."""
    name, version = model_version.rsplit("/", 1)
    try:
        MlflowClient().set_model_version_tag(name, version, SCORING_TAG, f"{scoring} (night of {ds})")
    except MlflowException as error:
        log.warning("could not record how %s was scored on %s: %s", model_version, ds, error)


def ensure_registered_model(registered_model: str) -> None:
    client = MlflowClient()
    try:
        client.get_registered_model(registered_model)
    except MlflowException as error:
        if not _absent(error):
            raise
        client.create_registered_model(registered_model)


def set_tuned_recipe(registered_model: str, recipe: Recipe, run_id: str) -> None:
    """Make `recipe` what the following nights fit (a tag on the registered model, visible in the UI)."""
    ensure_registered_model(registered_model)
    client = MlflowClient()
    client.set_registered_model_tag(registered_model, TUNED_RECIPE_TAG, recipe.to_json())
    client.set_registered_model_tag(registered_model, TUNED_RUN_TAG, run_id)


def nightly_recipe(settings: Settings) -> tuple[Recipe, str]:
    """(recipe, where it came from): the file `model.recipe` names, else the latest tuning's
    choice, else the champion's own recipe, else the shipped default (models/default_recipe.toml)."""
    name = settings.mlflow.registered_model
    if settings.model.recipe != "tuned":
        return _recipe_file(resolve(settings.home, settings.model.recipe), "model.recipe")
    try:
        tags = MlflowClient().get_registered_model(name).tags
    except MlflowException as error:
        if not _absent(error):
            raise
        tags = {}
    if TUNED_RECIPE_TAG in tags:
        try:
            return Recipe.from_json(tags[TUNED_RECIPE_TAG]), f"tuning run {tags.get(TUNED_RUN_TAG, '?')}"
        except ValueError as error:
            raise PermanentError(f"{name} tag {TUNED_RECIPE_TAG}: {error}; run `nightrec tune` again") from None
    champion = current_champion(name)
    if champion is not None:  # a champion from before tuning existed: keep its recipe, not the default
        try:
            return Recipe.from_dict(champion.recipe), f"champion version {champion.version} (no tuning yet)"
        except ValueError:
            pass
    path = resolve(settings.home, DEFAULT_RECIPE)
    recipe, _ = _recipe_file(path, "the default recipe")
    return recipe, f"{path} (no tuning yet: run `nightrec tune`)"


def _recipe_file(path: str, what: str) -> tuple[Recipe, str]:
    try:
        return Recipe.from_file(path), path
    except ValueError as error:
        raise PermanentError(f"{what}: {error}") from None


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
    """Move `champion` to `promoted` (remembering the one it replaces); `challenger` marks a version
    that lost the gate, and is removed once a newer version wins."""
    client = MlflowClient()
    if promoted is not None:
        previous = current_champion(registered_model)
        if previous is not None and previous.version != promoted:
            client.set_model_version_tag(registered_model, promoted, REPLACED_TAG, previous.version)
        client.set_registered_model_alias(registered_model, CHAMPION, promoted)
    if challenger is not None:
        client.set_registered_model_alias(registered_model, CHALLENGER, challenger)
    elif promoted is not None:
        try:
            client.delete_registered_model_alias(registered_model, CHALLENGER)
        except MlflowException:
            pass  # there was none


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
    if is_pickled(registered_model, target):
        raise PermanentError(f"{pickled_message(registered_model, target)}: not rolling back to it; name a version "
                             f"registered since (--to)")
    client.set_registered_model_alias(registered_model, CHAMPION, target)
    client.set_model_version_tag(registered_model, target, "rolled_back_from", current.version)
    return current.version, target


@dataclass
class Pruned:
    deleted: list[str]    # versions deleted, oldest first
    kept: list[str]       # versions left, oldest first
    bytes_freed: int      # model files deleted with them


def prune_versions(registered_model: str, keep: int) -> Pruned:
    """Keep the newest `keep` versions that carry no alias; delete older ones with their files.

    Versions with any alias (`champion`, `challenger`, ...) always stay, and so does the version
    the champion replaced (its `replaced_version` tag: what `rollback` returns to). Deleting a model
    version alone frees nothing: MLflow marks the registry row deleted and redacts its source, while
    the logged model (`models:/m-...`) and its files under the experiment's artifact location stay.
    So each version's logged model goes first, files included (unless a surviving version still uses
    it), then the version; a run interrupted half-way finishes the job on the next one. The runs that
    produced the versions (metrics, params, reports) are kept.
    """
    client = MlflowClient()
    versions = _all_versions(client, registered_model)
    if not versions:
        return Pruned([], [], 0)
    # The registered model's alias map: search results leave ModelVersion.aliases empty.
    aliases = {alias: str(version) for alias, version in client.get_registered_model(registered_model).aliases.items()}
    protected = set(aliases.values())
    for v in versions:
        if str(v.version) == aliases.get(CHAMPION) and v.tags.get(REPLACED_TAG):
            protected.add(v.tags[REPLACED_TAG])
    unaliased = sorted((v for v in versions if str(v.version) not in protected), key=lambda v: int(v.version))
    doomed = [str(v.version) for v in unaliased[:max(len(unaliased) - keep, 0)]]
    sources = {str(v.version): v.source for v in versions}
    freed = 0
    for version in doomed:
        freed += _delete_logged_model(client, sources[version], {(registered_model, v) for v in doomed})
        client.delete_model_version(registered_model, version)
    kept = sorted((str(v.version) for v in versions if str(v.version) not in doomed), key=int)
    return Pruned(deleted=doomed, kept=kept, bytes_freed=freed)


def _all_versions(client: MlflowClient, registered_model: str) -> list:
    versions, token = [], None
    while True:
        page = client.search_model_versions(f"name = '{registered_model}'", max_results=1000, page_token=token)
        versions.extend(page)
        token = page.token
        if not token:
            return [v for v in versions if v.name == registered_model]


def _delete_logged_model(client: MlflowClient, source: str, doomed: set[tuple[str, str]]) -> int:
    """Delete the logged model `source` (models:/m-...) points to, and its files; returns their bytes.
    Nothing happens when another surviving version uses it, or when it is gone already."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    prefix = "models:/"
    model_id = source[len(prefix):] if source.startswith(prefix) else ""
    if not model_id.startswith("m-") or "/" in model_id:
        return 0  # not a logged model of MLflow 3 (e.g. a run's artifact path): its files are the run's
    users = {(v.name, str(v.version)) for v in client.search_model_versions(f"source_path = '{source}'")}
    if users - doomed:
        return 0
    try:
        model = client.get_logged_model(model_id)
    except MlflowException as error:
        if error.error_code == "RESOURCE_DOES_NOT_EXIST":
            return 0  # deleted by an earlier, interrupted run (files first, then the logged model)
        raise
    location = model.artifact_location.rstrip("/")
    if not location.endswith(f"/models/{model_id}/artifacts"):
        raise PermanentError(f"logged model {model_id} keeps its files at {location}, not in a folder of "
                             f"its own: not deleting them")
    repository = get_artifact_repository(location)
    size = _artifact_bytes(repository)
    repository.delete_artifacts()
    if location.startswith("file:"):
        _remove_empty_folder(location)
    client.delete_logged_model(model_id)
    return size


def _artifact_bytes(repository, path: str | None = None) -> int:
    return sum(_artifact_bytes(repository, f.path) if f.is_dir else (f.file_size or 0)
               for f in repository.list_artifacts(path))


def _remove_empty_folder(location: str) -> None:
    """The local store leaves models/<id>/ behind, empty: remove it too."""
    from mlflow.utils.file_utils import local_file_uri_to_path

    folder = Path(local_file_uri_to_path(location)).parent
    try:
        folder.rmdir()
    except OSError:
        pass  # not empty, or gone already
