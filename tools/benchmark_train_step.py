#!/usr/bin/env python
r"""Time one training iteration of a detector with the compiled MSDA op and with the PyTorch path.

Builds ``model`` from a LazyConfig, feeds a fixed synthetic batch (random images of the given
size with a few random boxes each) and times forward + backward + AdamW step, after warm-up,
with ``DETR_EXT_MSDA_BACKEND=compiled`` and with ``pytorch``, each backend training its own copy
of the same initial weights with the same random numbers. The backends take turns, one step
each per round, so that a change of machine load affects both alike. Then measures each
backend's peak memory of one warm step (``--no-memory`` skips it):

- CUDA: ``torch.cuda.max_memory_allocated`` during one more step, minus what was allocated
  before it (weights, optimizer state): the bytes the step allocates beyond its inputs.
- CPU: the resident-set high-water mark (``VmHWM``) of a fresh process (this script with
  ``--memory-probe <backend>``, glibc told to ``mmap`` large blocks and return freed memory)
  that builds the same model and batch, runs one warm step, resets the mark to the current
  RSS (Linux ``/proc/self/clear_refs``) and runs one more step: that step's RSS above the RSS
  before it. ``None`` (the reason on stderr) without ``/proc/self/clear_refs`` or when the
  probe fails.

Both include the weight gradients, freed after every step. Prints a table (backend, median
seconds, peak MiB) with the time and memory ratios, and, with ``--json``, writes JSON
(``results[backend]["peak_memory_bytes"]``, ``memory_ratio_pytorch_over_compiled``).

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
from detr_ext.utils.run_info import (  # noqa: E402
    peak_rss_probe,
    proc_status_bytes,
    reset_peak_rss,
)

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


def cuda_peak_memory(run: BackendRun, inputs: list[dict]) -> int:
    """Bytes one more (warm) step of ``run`` allocates on the GPU beyond what was allocated
    before it."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    baseline = torch.cuda.memory_allocated()
    run.step(inputs)  # synchronizes at its end
    return torch.cuda.max_memory_allocated() - baseline


def memory_probe(run: BackendRun, inputs: list[dict]) -> int:
    """Runs in the fresh ``--memory-probe`` process: bytes of RSS high-water of one warm step of
    ``run`` above the RSS before it."""
    run.step(inputs)  # the first step's one-time costs (optimizer state, kernel setup)
    baseline = reset_peak_rss()  # the high-water mark is now the current RSS
    if baseline is None:
        raise RuntimeError("/proc/self/clear_refs is missing")
    run.step(inputs)
    return proc_status_bytes("VmHWM") - baseline


def cpu_peak_memory(
    config_file: str, opts: list[str], size: int, batch: int, backend: str, threads: int
) -> int | None:
    """:func:`memory_probe` of ``backend`` in a fresh process of this script with the same
    config, overrides, batch and seed and ``threads`` threads; ``None`` (the reason on stderr)
    without Linux's ``/proc/self/clear_refs`` or when the probe fails."""
    command = [sys.executable, str(Path(__file__).resolve()), "--config-file", config_file]
    command += ["--size", str(size), "--batch", str(batch), "--device", "cpu"]
    command += ["--memory-probe", backend, *opts]
    env = {"OMP_NUM_THREADS": str(threads)}
    return peak_rss_probe(command, f"{backend} memory probe", env=env)


def peak_memory(run: BackendRun, inputs: list[dict], args, device: torch.device) -> int | None:
    """Peak memory of one warm step of ``run``'s backend (see the module docstring)."""
    if device.type == "cuda":
        return cuda_peak_memory(run, inputs)
    if device.type == "cpu":
        opts, threads = args.opts, torch.get_num_threads()
        return cpu_peak_memory(args.config_file, opts, args.size, args.batch, run.backend, threads)
    print(f"{run.backend} peak memory: not measured on {device.type}", file=sys.stderr)
    return None


def mib(nbytes: int | None) -> str:
    return "n/a" if nbytes is None else f"{nbytes / 2**20:.1f}"


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
    parser.add_argument(
        "--no-memory",
        action="store_true",
        help="skip the peak-memory measurement (on CPU two more model builds)",
    )
    # Internal: run as the fresh CPU peak-memory process (see cpu_peak_memory).
    parser.add_argument("--memory-probe", choices=BACKENDS, help=argparse.SUPPRESS)
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
    if args.memory_probe:
        if device.type != "cpu":
            parser.error("--memory-probe: CPU only")
        peak = memory_probe(BackendRun(args.memory_probe, model, device), inputs)
        print(peak)  # the last line of stdout: what the parent reads
        return {"peak_memory_bytes": peak}
    # A copy of the same initial weights per backend: their steps alternate.
    runs = [BackendRun(backend, copy.deepcopy(model), device) for backend in BACKENDS]
    del model
    times = time_backends(runs, inputs, args.warmup, args.repeat)
    peaks = {backend: None for backend in BACKENDS}
    if not args.no_memory:
        for run in runs:
            peaks[run.backend] = peak_memory(run, inputs, args, device)
    env = environment(device.type)
    print(
        f"train step on {env['device_name']} ({device.type}, {env['threads']} threads), "
        f"commit {env['commit']}; median of {args.repeat} after {args.warmup} warm-up rounds"
    )
    print(f"{'backend':>9}  {'median s':>9}  {'peak MiB':>9}")
    results = {}
    for backend in BACKENDS:
        median = statistics.median(times[backend])
        results[backend] = {
            "median_s": median,
            "times_s": times[backend],
            "peak_memory_bytes": peaks[backend],
        }
        print(f"{backend:>9}  {median:9.3f}  {mib(peaks[backend]):>9}")
    ratio = results["pytorch"]["median_s"] / results["compiled"]["median_s"]
    print(f"PyTorch path / compiled op time ratio: {ratio:.2f}x")
    memory_ratio = None
    if peaks["compiled"] and peaks["pytorch"] is not None:
        memory_ratio = peaks["pytorch"] / peaks["compiled"]
    shown = "n/a" if memory_ratio is None else f"{memory_ratio:.2f}x"
    print(f"PyTorch path / compiled op peak memory ratio: {shown}")
    report = {
        "environment": env,
        "config": args.config_file,
        "overrides": args.opts,
        "size": args.size,
        "batch": args.batch,
        "warmup": args.warmup,
        "repeat": args.repeat,
        "results": results,
        "ratio_pytorch_over_compiled": ratio,
        "memory_ratio_pytorch_over_compiled": memory_ratio,
    }
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2))
        print(f"wrote {args.json}")
    return report


if __name__ == "__main__":
    main()
