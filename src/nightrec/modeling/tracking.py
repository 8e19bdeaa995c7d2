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
    root = settings.mlflow.artifact_root
    if "://" in root:
        return root
    return Path(resolve(settings.home, root)).as_uri()


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
                                    artifact_location=f"{artifact_location(settings)}/{settings.mlflow.experiment}")
