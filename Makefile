# detr_ext: every target sets up .venv first (idempotent: a second run reuses it).
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=
BENCH_ARGS ?=
TRAIN_ARGS ?=
DEMO_ARGS ?= --confidence-threshold 0.3
DEMO_WEIGHTS ?= output/dino_shapes/model_final.pth
DEMO_INPUT ?= datasets/shapes/val

.PHONY: setup build test test-all bench lint format clean
.PHONY: train demo
.PHONY: mutate

setup:
	bash scripts/setup_env.sh

build: setup

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

test-all: setup
	$(PY) -m pytest -m "" $(PYTEST_ARGS)

bench: setup
	$(PY) tools/benchmark_msda.py --json output/benchmark_msda.json --plot output/benchmark_msda.png --markdown output/benchmark_msda.md $(BENCH_ARGS)

# Train DINO on the bundled shapes data (CPU), evaluate, print AP, save predictions.png.
train: setup
	$(PY) tools/train_shapes_demo.py $(TRAIN_ARGS)

# Draw the detections of the model from `make train` on the shapes val images.
demo: setup
	$(PY) tools/demo.py --config-file projects/dino/configs/dino_shapes.py --weights $(DEMO_WEIGHTS) --input $(DEMO_INPUT) --output output/demo $(DEMO_ARGS)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# Mutation testing (not in CI; see README "Tests"). Installs mutmut into the venv here only.
# MUTATE_PATHS: files/folders under detr_ext (default: the modules where a silent bug costs
# most, see scripts/mutate.py); MUTATE_TESTS: tests to select from (default: per module);
# MUTATE_TIME: seconds for the whole run (stops cleanly, keeps results); MUTATE_JOBS: workers.
MUTATE_PATHS ?=
MUTATE_TESTS ?=
MUTATE_TIME ?= 3600
MUTATE_JOBS ?= 2
MUTMUT_VERSION ?= 3.8.1

mutate: setup
	$(VENV)/bin/pip install -q mutmut==$(MUTMUT_VERSION)
	-timeout --signal=INT --kill-after=60 $(MUTATE_TIME) $(PY) scripts/mutate.py --max-children $(MUTATE_JOBS) \
		$(if $(strip $(MUTATE_PATHS)),--paths $(MUTATE_PATHS)) $(if $(strip $(MUTATE_TESTS)),--tests $(MUTATE_TESTS))
	$(PY) scripts/mutate.py --summary

clean:
	rm -rf build detr_ext/_C*.so output
