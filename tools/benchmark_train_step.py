#!/usr/bin/env python
"""Time one training iteration of a detector with the compiled MSDA op and with the PyTorch path.

Builds ``model`` from a LazyConfig, feeds a fixed synthetic batch (random images of the given
size with a few random boxes each) and times forward + backward + AdamW step, after warm-up,
once with ``DETR_EXT_MSDA_BACKEND=compiled`` and once with ``pytorch`` on the same weights. Prints
the medians and their ratio and writes JSON.

    python tools/benchmark_train_step.py \
        --config-file projects/dino/configs/dino_r50_4scale_12ep.py --size 512 --batch 1 \
        --device cpu --json output/train_step.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from detectron2.config import LazyConfig, instantiate  # noqa: E402
from detectron2.structures import Boxes, Instances  # noqa: E402

from detr_ext.ops.benchmark import environment  # noqa: E402
from detr_ext.utils.cli import int_at_least  # noqa: E402

BACKEND_ENV = "DETR_EXT_MSDA_BACKEND"


def synthetic_batch(batch: int, size: int, num_classes: int, seed: int = 0) -> list[dict]:
    """``batch`` detectron2 inputs of ``size`` x ``size`` with 5 random boxes each."""
    generator = torch.Generator().manual_seed(seed)
    inputs = []
    for _ in range(batch):
        corners = torch.rand(5, 2, generator=generator) * size * 0.7
        extent = torch.rand(5, 2, generator=generator) * size * 0.25 + 8
        instances = Instances((size, size))
        instances.gt_boxes = Boxes(torch.cat([corners, corners + extent], 1))
        instances.gt_classes = torch.randint(0, num_classes, (5,), generator=generator)
        image = torch.randint(0, 256, (3, size, size), dtype=torch.uint8, generator=generator)
        inputs.append({"image": image, "height": size, "width": size, "instances": instances})
    return inputs


def time_backend(model, optimizer, inputs, backend: str, warmup: int, repeat: int, device):
    os.environ[BACKEND_ENV] = backend
    times = []
    for step in range(warmup + repeat):
        if device.type == "cuda":
            torch.cuda.synchronize()
        begin = time.perf_counter()
        losses = model(inputs)
        sum(losses.values()).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if step >= warmup:
            times.append(time.perf_counter() - begin)
    return statistics.median(times), times


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--config-file", required=True)
    parser.add_argument(
        "--size", type=int_at_least(32), default=512, help="square image side in pixels"
    )
    parser.add_argument("--batch", type=int_at_least(1), default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--warmup", type=int_at_least(0), default=1)
    parser.add_argument("--repeat", type=int_at_least(1), default=3)
    parser.add_argument("--json", default=None)
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides key=value")
    args = parser.parse_args(argv)
    if not os.path.isfile(args.config_file):
        parser.error(f"--config-file: expected a LazyConfig .py file, got {args.config_file!r}")
    try:
        device = torch.device(args.device)
    except RuntimeError as error:
        parser.error(f"--device: {error}")
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda asked for, but torch sees no GPU")

    cfg = LazyConfig.apply_overrides(LazyConfig.load(args.config_file), args.opts)
    torch.manual_seed(0)
    model = instantiate(cfg.model).to(device).train()
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    inputs = synthetic_batch(args.batch, args.size, cfg.model.num_classes)
    results = {}
    for backend in ("compiled", "pytorch"):
        model.load_state_dict(initial)  # same weights for both
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        torch.manual_seed(0)
        median, times = time_backend(
            model, optimizer, inputs, backend, args.warmup, args.repeat, device
        )
        results[backend] = {"median_s": median, "times_s": times}
        print(f"{backend:>9}: median {median:.3f} s per iteration ({len(times)} timed)")
    ratio = results["pytorch"]["median_s"] / results["compiled"]["median_s"]
    print(f"PyTorch path / compiled op time ratio: {ratio:.2f}x")
    report = {
        "environment": environment(device.type),
        "config": args.config_file,
        "overrides": args.opts,
        "size": args.size,
        "batch": args.batch,
        "warmup": args.warmup,
        "repeat": args.repeat,
        "results": results,
        "ratio_pytorch_over_compiled": ratio,
    }
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2))
        print(f"wrote {args.json}")
    return report


if __name__ == "__main__":
    main()
