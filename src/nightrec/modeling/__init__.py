"""Modeling wing: candidates behind one protocol, search, scoring, top-k, evaluation, the model artifact format,
the MLflow registry."""
