#!/usr/bin/env bash
# Fills .whl/ (git-ignored through .git/info/exclude) with the wheels that the model-level cuda
# tests need on a GPU machine that has torch but no detectron2 and no package index (the lent
# device machine: Python 3.12, x86-64). tools/gpu_check.sh's `models` step installs them into a
# temporary folder there. The device tool sends ignored folders only when asked: name `.whl` in
# the run's `carry`.
#
#   bash scripts/gpu_wheels.sh            # then run tools/gpu_check.sh with carry [".whl"]
#
# Binary wheels are downloaded for CPython 3.12 manylinux; pure-Python packages that PyPI has as
# source only (fvcore, iopath, antlr4) are built into wheels here; detectron2 is upstream's Python
# sources from sal-detectron2's wheel (tagged cp310, unpacked there, as scripts/install_detectron2.sh
# does here). The versions are this repository's (requirements.txt and the venv's resolution).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
PYVER=${GPU_WHEELS_PYTHON_VERSION:-3.12}
DEST=.whl
mkdir -p "$DEST" .git/info
grep -qx "/.whl/" .git/info/exclude 2>/dev/null || echo "/.whl/" >>.git/info/exclude
rm -f "$DEST"/*.whl
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" \
  --implementation cp "${PLATFORMS[@]}" -d "$DEST" \
  pycocotools==2.0.11 shapely==2.2.0 hotcoco==1.3.0
"$PY" -m pip wheel -q --no-deps -w "$DEST" fvcore==0.1.5.post20221221 iopath==0.1.10 \
  antlr4-python3-runtime==4.9.3 omegaconf==2.3.1 hydra-core==1.3.8 yacs==0.1.8 termcolor==3.3.0
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.10 -d "$DEST" \
  sal-detectron2==0.7.2
ls -1 "$DEST"
du -sh "$DEST"
