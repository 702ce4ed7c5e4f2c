"""In-process runs of ``tools/pretrain_backbone.py`` with tiny crops and head."""

from __future__ import annotations

import torch

from ..tool_runs import SHAPES_CONFIGS

DINO_CONFIG = SHAPES_CONFIGS["dino"]
TINY_OPTIONS = [
    "global_size=48", "local_size=24", "num_local=2", "out_dim=32", "hidden_dim=32",
    "bottleneck_dim=16", "freeze_last_layer_iters=1", "log_period=1", "checkpoint_period=2",
    "warmup_fraction=0.5",
]  # fmt: skip


def pretrain(tool, images, output, *flags, options=(), config=DINO_CONFIG):
    """``tool.main`` on ``images`` with batch 2, no probe, one thread and
    :data:`TINY_OPTIONS`; ``flags`` (``--max-iter 4``) before the options, ``options``
    (``key=value``) after them, so they win."""
    argv = ["--config-file", str(config), "--images", str(images), "--output-dir", str(output)]
    argv += ["--batch-size", "2", "--probe-dataset", "", "--num-threads", "1"]
    return tool.main(tool.build_parser().parse_args([*argv, *flags, *TINY_OPTIONS, *options]))


def load(path):
    """A checkpoint written by the tool."""
    return torch.load(path, map_location="cpu", weights_only=False)
