"""MLflow wiring: tracking/registry URIs from settings, and the experiment."""

from __future__ import annotations

import os
from pathlib import Path

from nightrec.settings import Settings, resolve


def tracking_uri(settings: Settings) -> str:
    uri = settings.mlflow.tracking_uri
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        path = Path(resolve(settings.home, uri[len("sqlite:///"):]))
        path.parent.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{path}"
    return uri


def artifact_location(settings: Settings) -> str:
    """Where artifacts are stored: artifact_root as a URI."""
    root = settings.mlflow.artifact_root
    if "://" in root:
        return root
    return Path(resolve(settings.home, root)).as_uri()


def experiment_location(settings: Settings, experiment: str) -> str | None:
    """An experiment's artifact location; None when the tracking server proxies the artifacts (it
    chooses: mlflow-artifacts:/...)."""
    return None if settings.mlflow.serve_artifacts else f"{artifact_location(settings)}/{experiment}"


def server_command(settings: Settings, host: str, port: int) -> list[str]:
    """`mlflow server` on the settings' store: the tracking server of the production profile (or the
    UI over the local store)."""
    store = settings.mlflow.backend_store or tracking_uri(settings)
    artifacts = (["--artifacts-destination", artifact_location(settings), "--serve-artifacts"]
                 if settings.mlflow.serve_artifacts else ["--default-artifact-root", artifact_location(settings),
                                                          "--no-serve-artifacts"])
    return ["server", "--backend-store-uri", store, *artifacts, "--host", host, "--port", str(port)]


def configure(settings: Settings) -> str:
    """Point this process at the settings' MLflow and make sure the experiment exists; returns its id."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    endpoint = settings.storage.endpoint()
    if endpoint:  # artifacts on an S3-compatible server: MLflow's boto3 client goes there too
        os.environ.setdefault("MLFLOW_S3_ENDPOINT_URL", endpoint)
    import mlflow

    mlflow.set_tracking_uri(tracking_uri(settings))
    mlflow.set_registry_uri(tracking_uri(settings))
    experiment = mlflow.get_experiment_by_name(settings.mlflow.experiment)
    if experiment is not None:
        return experiment.experiment_id
    return mlflow.create_experiment(settings.mlflow.experiment,
                                    artifact_location=experiment_location(settings, settings.mlflow.experiment))




def log_delta_input(name: str, root: str, version: int, context: str, tags: dict[str, str]) -> None:
    """Log a Delta table at one version as the active run's input: its path and version, so the data
    behind a run (and the model version it registered) can be read again exactly. Metadata only: no
    Spark job profiles the table."""
    import mlflow
    from mlflow.data.delta_dataset_source import DeltaDatasetSource
    from mlflow.data.meta_dataset import MetaDataset

    source = DeltaDatasetSource(path=root, delta_table_version=version)  # (its JSON leaves out a version 0)
    mlflow.log_input(MetaDataset(source, name=name, digest=f"v{version}"), context=context,
                     tags={**tags, "delta_table_version": str(version)})
