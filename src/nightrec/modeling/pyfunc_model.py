"""The MLflow pyfunc of a registered nightrec model, logged as code: MLflow runs this file to load a
version (mlflow.pyfunc.load_model), so no pickled class ties the version to a module path."""

import mlflow

from nightrec.modeling.registry import RecommenderModel

mlflow.models.set_model(RecommenderModel())
