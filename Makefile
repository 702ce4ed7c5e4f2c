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

clean:
	rm -rf build detr_ext/_C*.so output
