# nightrec: `make demo` and `make test` work on a fresh Debian/Ubuntu machine with Python 3.11.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
DEMO_DS := 1998-04-22
DEMO_LOOKBACK := 215

.PHONY: demo test test-fast lint setup system redis serve mlflow-ui airflow-ui clean

demo: setup redis
	$(BIN)/nightrec demo-data
	$(BIN)/nightrec run --ds $(DEMO_DS) --lookback-days $(DEMO_LOOKBACK)
	$(BIN)/nightrec status --count
	$(BIN)/nightrec recs 1 --k 10

test: lint
	$(BIN)/python -m pytest

# The tests that need no Spark, Airflow or MLflow run (unit tests, the lookup service on a real Redis): < 1 minute.
test-fast: setup
	$(BIN)/python -m pytest -m fast

lint: setup
	$(BIN)/ruff check src tests bench dags jobs

setup: system $(VENV)/.installed
	@$(BIN)/nightrec spark-packages

system:
	@scripts/ensure-system.sh

$(VENV)/.installed: pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "nightrec needs Python 3.11, found " + sys.version.split()[0]'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e ".[pipeline,dev]"
	touch $@

redis:
	@scripts/ensure-redis.sh

serve: setup redis
	$(BIN)/nightrec serve --port 8000

mlflow-ui: setup
	$(BIN)/nightrec mlflow-server --port 5000

airflow-ui: setup
	$(BIN)/nightrec airflow standalone

clean:
	rm -rf var
