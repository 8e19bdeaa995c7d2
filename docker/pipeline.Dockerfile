# The pipeline image: nightrec[pipeline] (Spark, Delta, MLflow, Airflow, great_expectations) and Java
# for Spark; runs the nightly DAG, single stages, spark-submit jobs and MLflow's UI.
#   docker build -f docker/pipeline.Dockerfile -t nightrec-pipeline .
FROM python:3.11-slim-bookworm
RUN apt-get update && apt-get install -y --no-install-recommends openjdk-17-jre-headless procps libopenblas0-pthread \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/nightrec
COPY pyproject.toml constraints.txt README.md ./
COPY src ./src
RUN pip install --no-cache-dir -c constraints.txt ".[pipeline]"
# What the code reads at run time (tests/unit/test_docker.py keeps this list complete):
# settings, the DAG files, spark-submit entry points, the default recipe and search space.
COPY conf ./conf
COPY dags ./dags
COPY jobs ./jobs
COPY models ./models
# No SPARK_LOCAL_IP here: nightrec binds a local-mode driver to 127.0.0.1 itself, and a driver for a
# cluster master must bind an address the executors can reach (docs/deploy.md).
ENV NIGHTREC_HOME=/opt/nightrec MLFLOW_DISABLE_TELEMETRY=true
ENTRYPOINT ["nightrec"]
