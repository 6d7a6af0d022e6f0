# Model Factory — the two commands a newcomer needs are `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP_INSTALL := $(BIN)/pip install --disable-pip-version-check -q -c constraints.txt

.PHONY: run test clean distclean validate-grid dashboard airflow-ui up down status benchmarks help

help:
	@echo "make run            run the factory end to end on the embedded default"
	@echo "make test           the whole test suite (real servers, real browser)"
	@echo "make validate-grid  check config/grid.yaml without running anything"
	@echo "make dashboard      serve the experiments dashboard on http://127.0.0.1:5006"
	@echo "make up             start the local stack in the background: Airflow UI on http://127.0.0.1:8080,"
	@echo "                    scheduler, dag-processor, triggerer, CML workspace, dashboards on :5006"
	@echo "make status         what make up started and whether it runs"
	@echo "make down           stop exactly what make up started"
	@echo "make airflow-ui     make up in the foreground (Ctrl-C stops it)"
	@echo "make benchmarks     run the benchmarks in benchmarks/"
	@echo "make clean          remove all runtime state (var/, test-output/)"
	@echo "make distclean      also remove the venv"

# The venv is rebuilt when the pinned dependencies change.
$(BIN)/.installed: setup.cfg pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "installing the project into $(VENV) (first time: a few minutes)…"
	$(BIN)/pip install --disable-pip-version-check -q --upgrade pip
	$(PIP_INSTALL) -e .
	@touch $@

$(BIN)/.installed-test: $(BIN)/.installed
	@echo "installing test dependencies (pyspark for the HiveServer2 tests: a few minutes)…"
	$(PIP_INSTALL) -e '.[test]'
	@touch $@

# Uses the stack of make up, or starts it and stops it after. RUN_ARGS: e.g.
# RUN_ARGS="--keep-up --grid my_grid.yaml" (see python -m stack run --help)
run: $(BIN)/.installed
	$(BIN)/python -m stack run $(RUN_ARGS)

test: $(BIN)/.installed-test
	bash scripts/ensure-system-deps.sh
	$(BIN)/lint-imports --no-cache setup.cfg  # the import contracts of setup.cfg: fails fast, before the suite
	$(BIN)/python -m pytest

validate-grid: $(BIN)/.installed
	$(BIN)/python -m factory_tasks.training.grid validate config/grid.yaml

dashboard: $(BIN)/.installed
	$(BIN)/python -m stack dashboard

# UP_ARGS: e.g. UP_ARGS="--port 8081 --host 0.0.0.0" (see python -m stack up --help)
up: $(BIN)/.installed
	$(BIN)/python -m stack up $(UP_ARGS)

down: $(BIN)/.installed
	$(BIN)/python -m stack down

status: $(BIN)/.installed
	@$(BIN)/python -m stack status || true

airflow-ui: $(BIN)/.installed
	$(BIN)/python -m stack airflow-ui $(UP_ARGS)

benchmarks: $(BIN)/.installed-test
	$(BIN)/python benchmarks/grid_throughput.py
	$(BIN)/python benchmarks/endpoint_latency.py

clean:
	@if [ -f var/stack-up.json ]; then echo "make up is running on var/ (var/stack-up.json): make down first"; exit 1; fi
	rm -rf var test-output

distclean: clean
	rm -rf $(VENV) *.egg-info
