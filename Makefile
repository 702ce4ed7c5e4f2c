# detr_ext: every target sets up .venv first (idempotent: a second run reuses it).
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=
BENCH_ARGS ?=

.PHONY: setup build test test-all bench lint format clean

setup:
	bash scripts/setup_env.sh

build: setup

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

test-all: setup
	$(PY) -m pytest -m "" $(PYTEST_ARGS)

bench: setup
	$(PY) tools/benchmark_msda.py --json output/benchmark_msda.json --plot output/benchmark_msda.png --markdown output/benchmark_msda.md $(BENCH_ARGS)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf build detr_ext/_C*.so output
