"""Running ``tools/*.py`` in subprocesses on CPU, against a shapes dataset shrunk to a few
images under a temporary ``$DETR_EXT_DATASETS``."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

REPO_ROOT = Path(__file__).resolve().parents[1]

# A config file (format with base=<path of a shapes config>) that keeps the base's model and
# training recipe but shrinks the data: 6 train / 3 val images, batch 2, 2 iterations.
TINY_SHAPES_CONFIG = """
from detectron2.config import LazyConfig

from detr_ext.data.datasets import register_shapes

_base = LazyConfig.load({base!r})
# $DETR_EXT_DATASETS points at a temp dir; a few images per split keep the run short.
register_shapes(root=None, num_train=6, num_val=3, seed=0, replace=True)

model = _base.model
dataloader = _base.dataloader
optimizer = _base.optimizer
lr_multiplier = _base.lr_multiplier
train = _base.train

dataloader.train.total_batch_size = 2
dataloader.train.num_workers = 0
dataloader.test.num_workers = 0
train.max_iter = 2
"""

# The shapes configs of two projects, for tests that need a real detector config.
SHAPES_CONFIGS = {
    "detr": REPO_ROOT / "projects" / "detr" / "configs" / "detr_shapes.py",
    "dino": REPO_ROOT / "projects" / "dino" / "configs" / "dino_shapes.py",
}


def tiny_shapes_config(project: str, work_dir: Path) -> Path:
    """``work_dir/<project>_shapes_tiny.py``: ``SHAPES_CONFIGS[project]`` shrunk by
    :data:`TINY_SHAPES_CONFIG`."""
    config = work_dir / f"{project}_shapes_tiny.py"
    config.write_text(TINY_SHAPES_CONFIG.format(base=str(SHAPES_CONFIGS[project])))
    return config


def run_tool(
    tool: str, args: list[str], *, cwd: Path, datasets: Path
) -> subprocess.CompletedProcess:
    """``python tools/<tool> <args>`` from ``cwd`` with ``DETR_EXT_DATASETS=datasets``, no
    visible GPU and one intra-op thread (unless ``OMP_NUM_THREADS`` is set); output captured."""
    env = dict(os.environ)
    env["DETR_EXT_DATASETS"] = str(datasets)
    env["CUDA_VISIBLE_DEVICES"] = ""
    env.setdefault("OMP_NUM_THREADS", "1")
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / "tools" / tool), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def load_script(relative_path: str) -> ModuleType:
    """A script of the repository (``tools/*.py``, ``scripts/*.py``: not a package) loaded as
    a module, e.g. to call its ``main(argv)`` or build its parser in-process."""
    path = REPO_ROOT / relative_path
    name = "script_" + relative_path.replace("/", "_").removesuffix(".py")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
