# The lookup image: nightrec[serve] alone (FastAPI, uvicorn, redis + hiredis, prometheus-client), no
# Java, Spark, MLflow or Airflow; serves recommendations from Redis.
#   docker build -f docker/lookup.Dockerfile -t nightrec-lookup .
#   docker run -p 8000:8000 -e NIGHTREC_REDIS__URL=redis://cache:6379/0 nightrec-lookup
FROM python:3.11-slim-bookworm
WORKDIR /opt/nightrec
COPY pyproject.toml constraints.txt README.md ./
COPY src ./src
RUN pip install --no-cache-dir -c constraints.txt ".[serve]"
# What the code reads at run time (tests/unit/test_docker.py keeps this list complete): settings.
COPY conf ./conf
ENV NIGHTREC_HOME=/opt/nightrec
ENTRYPOINT ["nightrec"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
