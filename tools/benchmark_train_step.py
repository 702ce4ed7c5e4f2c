#!/usr/bin/env python
r"""Time one training iteration of a detector with the compiled MSDA op and with the PyTorch path.

Builds ``model`` from a LazyConfig, feeds a fixed synthetic batch (random images of the given
size with a few random boxes each) and times forward + backward + AdamW step, after warm-up,
with ``DETR_EXT_MSDA_BACKEND=compiled`` and with ``pytorch``, each backend training its own copy
of the same initial weights with the same random numbers. The backends take turns, one step
each per round, so that a change of machine load affects both alike. Prints the median per
backend and their ratio and writes JSON.

    python tools/benchmark_train_step.py \
        --config-file projects/dino/configs/dino_r50_4scale_12ep.py --size 512 --batch 1 \
        --device cpu --json output/train_step.json
"""

from __future__ import annotations

import argparse
import copy
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

from detectron2.config import instantiate  # noqa: E402
from detectron2.structures import Boxes, Instances  # noqa: E402

from detr_ext.config import ConfigUsageError, load_config  # noqa: E402
from detr_ext.ops.benchmark import environment  # noqa: E402
from detr_ext.utils.cli import int_at_least  # noqa: E402

BACKEND_ENV = "DETR_EXT_MSDA_BACKEND"
BACKENDS = ("compiled", "pytorch")


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


class BackendRun:
    """One backend's model, optimizer and random-number stream: each step runs with
    ``DETR_EXT_MSDA_BACKEND=<backend>`` and continues this backend's own torch generator
    states, so that both backends draw the same numbers (dropout, denoising noise) while their
    steps alternate."""

    def __init__(self, backend: str, model: torch.nn.Module, device: torch.device) -> None:
        self.backend = backend
        self.model = model
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        self.device = device
        torch.manual_seed(0)
        self.rng_states = self._get_rng_states()

    def _get_rng_states(self) -> tuple:
        cuda = torch.cuda.get_rng_state_all() if self.device.type == "cuda" else None
        return torch.get_rng_state(), cuda

    def step(self, inputs: list[dict]) -> float:
        """One forward + backward + AdamW step; returns its seconds."""
        os.environ[BACKEND_ENV] = self.backend
        cpu_state, cuda_states = self.rng_states
        torch.set_rng_state(cpu_state)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        begin = time.perf_counter()
        losses = self.model(inputs)
        sum(losses.values()).backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - begin
        self.rng_states = self._get_rng_states()
        return seconds


def time_backends(runs: list[BackendRun], inputs: list[dict], warmup: int, repeat: int) -> dict:
    """``{backend: [seconds of each timed step]}``, the backends taking turns: ``warmup``
    untimed rounds, then ``repeat`` timed ones, one step of each backend per round."""
    times: dict[str, list[float]] = {run.backend: [] for run in runs}
    for round_index in range(warmup + repeat):
        for run in runs:
            seconds = run.step(inputs)
            if round_index >= warmup:
                times[run.backend].append(seconds)
    return times


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
    try:
        device = torch.device(args.device)
    except RuntimeError as error:
        parser.error(f"--device: {error}")
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda asked for, but torch sees no GPU")
    try:
        cfg = load_config(args.config_file, args.opts)
    except ConfigUsageError as error:
        parser.error(str(error))
    torch.manual_seed(0)
    model = instantiate(cfg.model).to(device).train()
    inputs = synthetic_batch(args.batch, args.size, cfg.model.num_classes)
    # A copy of the same initial weights per backend: their steps alternate.
    runs = [BackendRun(backend, copy.deepcopy(model), device) for backend in BACKENDS]
    del model
    times = time_backends(runs, inputs, args.warmup, args.repeat)
    results = {}
    for backend in BACKENDS:
        median = statistics.median(times[backend])
        results[backend] = {"median_s": median, "times_s": times[backend]}
        print(f"{backend:>9}: median {median:.3f} s per iteration ({args.repeat} timed)")
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
