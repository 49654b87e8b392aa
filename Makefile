# Two commands do everything on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test cluster-test lint jars browser install clean-data help

help:
	@echo "make run    set up (venv, package, Delta jars) and run the whole workflow on generated data"
	@echo "make test   set up the same way and run the test suite"
	@echo "make lint   ruff + mypy"
	@echo "make cluster-test  the workflow on a local Spark standalone cluster vs a local run"

# The virtual environment with the package (editable) and the dev tools. PyPI ships pyspark
# only as a source archive, so the first install builds it (about two minutes, then cached).
$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "retailml needs Python >= 3.11"'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[spark,dev]'
	touch $(STAMP)

install: $(STAMP)

# Delta Lake's jars, resolved once into the local Ivy cache so later runs and tests need no
# network (falls back to `mvn dependency:get` where only Maven can reach the repository).
jars: install
	$(BIN)/retailml fetch-jars

run: jars
	$(BIN)/retailml run

# The benchmark's single-node comparison (benchmarks/single_node.py) needs the `bench` extra
# (LightGBM, implicit, scikit-learn); installed once, and again when pyproject.toml changes.
BENCH_STAMP := $(VENV)/.bench-installed
$(BENCH_STAMP): pyproject.toml $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[spark,dev,bench]'
	touch $(BENCH_STAMP)

# The benchmark harness: the whole workflow on generated data of size S (demo), M (100k
# customers) or L (1M customers), measured per task into benchmarks/results.csv and
# docs/benchmarks.md, then the single-node comparison on the same files
# (benchmarks/single_node.csv). Not part of `make test`.
SIZE ?= S
.PHONY: bench
bench: jars $(BENCH_STAMP)
	$(BIN)/python benchmarks/bench.py --size $(SIZE)

# The daily-run benchmark: a full run without the last day, then the run when that day's file
# arrives (benchmarks/daily.csv). Not part of `make test`.
.PHONY: bench-daily
bench-daily: jars $(BENCH_STAMP)
	$(BIN)/python benchmarks/daily.py --size $(SIZE)

# Headless Chromium (Debian's package) for the test that opens the report in a real browser;
# installed once when missing.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || { \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends chromium; }

test: jars browser
	$(BIN)/python -m pytest

# The whole workflow on a Spark standalone cluster (one master, two 1-core workers started with
# pyspark's bin/spark-class) compared with a local run; about ten minutes.
cluster-test: jars
	$(BIN)/python -m pytest -m cluster tests/cluster -v

lint: install
	$(BIN)/ruff check src tests
	$(BIN)/mypy

clean-data:
	rm -rf data lakehouse mlflow reports logs spark-warehouse
