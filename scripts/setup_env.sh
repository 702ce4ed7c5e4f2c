#!/usr/bin/env bash
# Creates (or reuses) the project's virtual environment in $VENV (default .venv), installs the
# requirements and detectron2, and builds the detr_ext extension in place. Idempotent: a second
# run reuses the venv, skips pip when requirements.txt has not changed, and lets the build reuse
# its objects. Environment knobs: VENV, PYTHON (interpreter for a new venv), DETR_EXT_WITH_CUDA,
# TORCH_CUDA_ARCH_LIST, MAX_JOBS (see README).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
BASE_PYTHON=${PYTHON:-python3.11}
command -v "$BASE_PYTHON" >/dev/null || BASE_PYTHON=python3

if [ ! -x "$VENV/bin/python" ]; then
    echo "[setup] creating $VENV with $($BASE_PYTHON --version)"
    "$BASE_PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
STAMP="$VENV/.requirements.sha256"
WANT=$(cat requirements.txt scripts/install_detectron2.sh | sha256sum | cut -d' ' -f1)
if [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
    "$PY" -m pip install --upgrade pip >/dev/null
    "$PY" -m pip install -r requirements.txt
    PYTHON="$PY" bash scripts/install_detectron2.sh
    echo "$WANT" > "$STAMP"
else
    echo "[setup] requirements unchanged, reusing $VENV"
fi
# The repository root on the venv's path: detr_ext, projects.* and configs import from anywhere.
SITE=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo "$PWD" > "$SITE/detr_ext-repo.pth"
echo "[setup] building detr_ext._C in place"
"$PY" setup.py build_ext --inplace
"$PY" -c 'import detr_ext.ops as ops; print("[setup]", ops.build_info())'
