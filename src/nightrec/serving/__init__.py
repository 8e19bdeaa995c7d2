"""Serving wing: the Redis layout and codecs, the loader, the lookup, the HTTP API.
Imports no Spark, MLflow or Airflow."""
