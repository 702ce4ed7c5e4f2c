#!/usr/bin/env bash
# Installs detectron2 into the active Python environment, in this order of preference:
#   1. keep an existing install (anything `import detectron2` finds);
#   2. the official source install from facebookresearch/detectron2 on GitHub;
#   3. upstream detectron2's Python sources from the PyPI wheel sal-detectron2==0.7.2.
# detectron2 has no official PyPI release. The sal-detectron2 wheel is tagged cp310 and its
# compiled detectron2._C is built for Python 3.10; detr_ext uses none of detectron2's compiled ops,
# so its pure-Python sources are all we need. It is unpacked into a directory of its own, put on
# sys.path by a .pth file, and its dependencies come from requirements.txt (installed first).
# Writes which path was taken to "$VENV/detectron2-install.txt".
set -euo pipefail
PYTHON=${PYTHON:-python}
PREFIX=$("$PYTHON" -c 'import sys; print(sys.prefix)')
RECORD="$PREFIX/detectron2-install.txt"
OFFICIAL_URL=${DETECTRON2_GIT_URL:-git+https://github.com/facebookresearch/detectron2.git}

if "$PYTHON" -c 'import detectron2' 2>/dev/null; then
    echo "[detectron2] already installed: $("$PYTHON" -c 'import detectron2; print(detectron2.__version__, detectron2.__file__)')"
    [ -f "$RECORD" ] || echo "existing install kept" > "$RECORD"
    exit 0
fi

echo "[detectron2] trying the official source install from $OFFICIAL_URL"
if GIT_TERMINAL_PROMPT=0 timeout 300 "$PYTHON" -m pip install --no-build-isolation "$OFFICIAL_URL"; then
    echo "official source install from $OFFICIAL_URL" > "$RECORD"
    exit 0
fi

echo "[detectron2] the official source install failed (GitHub unreachable?);"
echo "[detectron2] falling back to upstream's Python sources from the PyPI wheel sal-detectron2==0.7.2"
SITE=$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
TARGET="$PREFIX/detectron2-src"
rm -rf "$TARGET"
"$PYTHON" -m pip install --no-deps --only-binary=:all: --python-version 3.10 \
    --target "$TARGET" sal-detectron2==0.7.2
# The cp310 extension cannot load on other Pythons; remove it so nothing tries.
find "$TARGET/detectron2" -maxdepth 1 -name '_C*.so' -delete
echo "$TARGET" > "$SITE/detectron2-src.pth"
"$PYTHON" -c 'import detectron2; from detectron2.modeling import META_ARCH_REGISTRY; print("[detectron2]", detectron2.__version__, detectron2.__file__)'
echo "sal-detectron2==0.7.2 wheel (upstream detectron2 Python sources; official GitHub install unreachable)" > "$RECORD"
