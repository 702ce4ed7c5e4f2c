#!/usr/bin/env python
"""Benchmark of the compiled multi-scale deformable attention against the PyTorch path.

For each problem (preset or custom shapes), batch size, dtype and kind of sampling locations,
both backends run forward (under no_grad) and forward+backward. Reported: median time after
warm-up (CUDA events on a GPU), peak memory of one step beyond the inputs, and the speedup and
memory ratios of the compiled op over the PyTorch path, all measured in the same run.

Peak memory on CPU is measured in a fresh subprocess per step (the process's RSS high-water mark
is reset after the inputs exist, via /proc/self/clear_refs), so allocator caches of earlier runs
cannot hide allocations; on CUDA it is ``torch.cuda.max_memory_allocated``.

Examples:
    python tools/benchmark_msda.py                                   # encoder+decoder, fp32
    python tools/benchmark_msda.py --preset encoder --locations realistic --json out.json
    python tools/benchmark_msda.py --device cuda --dtype float32 bfloat16 --batch 1 2 8 --plot p.png
    python tools/benchmark_msda.py --shapes 64x64,32x32 --queries 1000 --heads 8 --channels 32
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from detr_ext.ops import build_info, ms_deform_attn, ms_deform_attn_pytorch  # noqa: E402

DINO_4SCALE_800x1333 = ((100, 167), (50, 84), (25, 42), (13, 21))


@dataclass(frozen=True)
class Problem:
    """One MSDA problem size. ``queries=None`` means one query per value position (encoder)."""

    name: str
    shapes: tuple[tuple[int, int], ...]
    queries: int | None
    heads: int = 8
    channels: int = 32
    points: int = 4

    @property
    def num_values(self) -> int:
        return sum(h * w for h, w in self.shapes)

    @property
    def num_queries(self) -> int:
        return self.num_values if self.queries is None else self.queries


PRESETS = {
    "encoder": Problem("encoder", DINO_4SCALE_800x1333, None),
    "decoder": Problem("decoder", DINO_4SCALE_800x1333, 900),
}
DTYPES = {
    "float64": torch.float64,
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}
BACKENDS = ("compiled", "pytorch")
MODES = ("forward", "forward_backward")


# ------------------------------------------------------------------ inputs
def reference_points(problem: Problem, batch: int, generator: torch.Generator) -> torch.Tensor:
    """``[B, Q, 2]`` normalized points: pixel centres of all positions (encoder), else random."""
    if problem.queries is not None:
        return torch.rand(batch, problem.queries, 2, generator=generator)
    points = []
    for height, width in problem.shapes:
        ys, xs = torch.meshgrid(
            (torch.arange(height) + 0.5) / height,
            (torch.arange(width) + 0.5) / width,
            indexing="ij",
        )
        points.append(torch.stack([xs.flatten(), ys.flatten()], -1))
    return torch.cat(points).expand(batch, -1, -1)


def make_inputs(problem, batch, dtype, device, locations, seed=0, requires_grad=False):
    """value, spatial_shapes, level_start_index, sampling_locations, attention_weights.

    Realistic locations are what a trained deformable encoder/decoder produces: each query's
    reference point plus offsets of a few pixels on every level. Uniform ones are spread over
    the whole map (worst case for cache locality).
    """
    generator = torch.Generator().manual_seed(seed)
    levels, heads, points = len(problem.shapes), problem.heads, problem.points
    queries = problem.num_queries
    spatial_shapes = torch.tensor(problem.shapes, dtype=torch.long)
    sizes = spatial_shapes.prod(1)
    level_start_index = torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])
    value = torch.randn(batch, problem.num_values, heads, problem.channels, generator=generator)
    loc_size = (batch, queries, heads, levels, points, 2)
    if locations == "uniform":
        sampling_locations = torch.rand(loc_size, generator=generator)
    elif locations == "realistic":
        centres = reference_points(problem, batch, generator)[:, :, None, None, None, :]
        pixel_offsets = torch.randn(loc_size, generator=generator) * 2.0
        level_size = spatial_shapes.flip(-1).float()[None, None, None, :, None, :]
        sampling_locations = centres + pixel_offsets / level_size
    else:
        raise ValueError(f"locations must be 'realistic' or 'uniform', got {locations!r}")
    logits = torch.randn(batch, queries, heads, levels * points, generator=generator)
    attention_weights = logits.softmax(-1).view(batch, queries, heads, levels, points)
    coord_dtype = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    tensors = [
        value.to(device, dtype),
        spatial_shapes.to(device),
        level_start_index.to(device),
        sampling_locations.to(device, coord_dtype),
        attention_weights.to(device, coord_dtype),
    ]
    for index in (0, 3, 4):
        tensors[index].requires_grad_(requires_grad)
    return tensors


def step_function(backend: str, mode: str, inputs):
    """A closure running one forward (no_grad) or forward+backward of ``backend``."""
    value, spatial_shapes, level_start_index, locations, weights = inputs

    def forward():
        if backend == "pytorch":
            return ms_deform_attn_pytorch(value, spatial_shapes, locations, weights)
        return ms_deform_attn(
            value, spatial_shapes, level_start_index, locations, weights, backend="compiled"
        )

    if mode == "forward":

        def run():
            with torch.no_grad():
                return forward()

        return run
    grad_output = None

    def run_with_backward():
        nonlocal grad_output
        for tensor in (value, locations, weights):
            tensor.grad = None
        output = forward()
        if grad_output is None:
            grad_output = torch.ones_like(output)
        output.backward(grad_output)

    return run_with_backward


# ------------------------------------------------------------------ measurement
def _synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def median_time(run, device: str, warmup: int, repeat: int) -> float:
    """Median seconds of ``run`` after ``warmup`` calls (CUDA events on a GPU)."""
    for _ in range(warmup):
        run()
    _synchronize(device)
    times = []
    for _ in range(repeat):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            run()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            begin = time.perf_counter()
            run()
            times.append(time.perf_counter() - begin)
    return statistics.median(times)


def _proc_status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        return int(re.search(rf"{field}:\s+(\d+)", status.read()).group(1))


def cpu_peak_memory_probe(spec: dict) -> int:
    """Runs in a fresh process: bytes of RSS high-water above the RSS with inputs built."""
    problem = Problem(**{**spec["problem"], "shapes": tuple(map(tuple, spec["problem"]["shapes"]))})
    torch.set_num_threads(spec["threads"])
    inputs = make_inputs(
        problem,
        spec["batch"],
        DTYPES[spec["dtype"]],
        "cpu",
        spec["locations"],
        requires_grad=spec["mode"] != "forward",
    )
    run = step_function(spec["backend"], spec["mode"], inputs)
    baseline = _proc_status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")  # reset the high-water mark to the current RSS
    run()
    return (_proc_status_kib("VmHWM") - baseline) * 1024


def peak_memory(
    problem, batch, dtype_name, device, locations, backend, mode, threads
) -> int | None:
    if device == "cuda":
        inputs = make_inputs(
            problem, batch, DTYPES[dtype_name], device, locations, requires_grad=mode != "forward"
        )
        run = step_function(backend, mode, inputs)
        run()  # the first call may allocate workspace that later calls reuse
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        baseline = torch.cuda.memory_allocated()
        run()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - baseline
    if not os.path.exists("/proc/self/clear_refs"):
        return None
    spec = {
        "problem": asdict(problem),
        "batch": batch,
        "dtype": dtype_name,
        "locations": locations,
        "backend": backend,
        "mode": mode,
        "threads": threads,
    }
    # A fixed mmap threshold makes glibc map every large block on its own and unmap it on
    # free, so RSS follows the live tensors instead of pages kept by the heap.
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
    result = subprocess.run(
        [sys.executable, __file__, "--memory-probe", json.dumps(spec)],
        capture_output=True,
        text=True,
        check=False,
        env=env,
    )
    if result.returncode != 0:
        print(f"memory probe failed: {result.stderr.strip()[-500:]}", file=sys.stderr)
        return None
    return int(result.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------ reporting
def environment(device: str) -> dict:
    try:
        commit = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        commit += "-dirty" if dirty else ""
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    if device == "cuda":
        name = torch.cuda.get_device_name()
    else:
        name = platform.processor() or platform.machine()
        if os.path.exists("/proc/cpuinfo"):
            match = re.search(r"model name\s*:\s*(.+)", Path("/proc/cpuinfo").read_text())
            name = match.group(1).strip() if match else name
    return {
        "device": device,
        "device_name": name,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "python": platform.python_version(),
        "commit": commit,
        "build": build_info(),
    }


def _mib(value: int | None) -> str:
    return "n/a" if value is None else f"{value / 2**20:.1f}"


def print_table(rows: list[dict]) -> None:
    header = (
        f"{'problem':<9} {'B':>2} {'dtype':<8} {'locations':<9} {'mode':<16} "
        f"{'compiled ms':>11} {'pytorch ms':>11} {'speedup':>8} "
        f"{'comp MiB':>9} {'torch MiB':>9} {'mem ratio':>9}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        ratio = row["memory_ratio"]
        print(
            f"{row['problem']:<9} {row['batch']:>2} {row['dtype']:<8} {row['locations']:<9} "
            f"{row['mode']:<16} {row['compiled_s'] * 1e3:>11.2f} {row['pytorch_s'] * 1e3:>11.2f} "
            f"{row['speedup']:>7.1f}x {_mib(row['compiled_peak_bytes']):>9} "
            f"{_mib(row['pytorch_peak_bytes']):>9} "
            f"{'n/a' if ratio is None else f'{ratio:.3f}':>9}"
        )


def markdown_table(result: dict) -> str:
    """The results as a markdown table with a line naming device, torch and commit."""
    env = result["environment"]
    lines = [
        f"MSDA benchmark on {env['device_name']} ({env['device']}, {env['threads']} threads), "
        f"torch {env['torch']}, commit {env['commit']}; median of {result['repeat']} runs after "
        f"{result['warmup']} warm-up runs.",
        "",
        "| problem | batch | dtype | locations | mode | compiled ms | PyTorch ms | speedup "
        "| compiled MiB | PyTorch MiB | memory ratio |",
        "| --- | --: | --- | --- | --- | --: | --: | --: | --: | --: | --: |",
    ]
    for row in result["results"]:
        ratio = row["memory_ratio"]
        lines.append(
            f"| {row['problem']} | {row['batch']} | {row['dtype']} | {row['locations']} "
            f"| {row['mode'].replace('_', '+')} | {row['compiled_s'] * 1e3:.1f} "
            f"| {row['pytorch_s'] * 1e3:.1f} | {row['speedup']:.1f}x "
            f"| {_mib(row['compiled_peak_bytes'])} | {_mib(row['pytorch_peak_bytes'])} "
            f"| {'n/a' if ratio is None else f'{ratio:.3f}'} |"
        )
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [
        f"{r['problem']} B{r['batch']} {r['dtype']}\n{r['locations']} {r['mode'].replace('_', '+')}"
        for r in rows
    ]
    fig, axis = plt.subplots(figsize=(max(6, 1.2 * len(rows)), 4.5))
    bars = axis.bar(range(len(rows)), [r["speedup"] for r in rows], color="#3b7dd8")
    axis.bar_label(bars, fmt="%.1fx")
    axis.set_xticks(range(len(rows)), labels, rotation=30, ha="right", fontsize=7)
    axis.set_ylabel("speedup of compiled op over PyTorch path")
    axis.axhline(1.0, color="grey", lw=0.8)
    axis.set_title(f"MSDA on {rows[0]['device']}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


def measure(problem, batch, dtype_name, locations, mode, args, threads) -> dict:
    """One table row: both backends' median time and peak memory, and their ratios."""
    row = {
        "problem": problem.name,
        "shapes": [list(s) for s in problem.shapes],
        "queries": problem.num_queries,
        "heads": problem.heads,
        "channels": problem.channels,
        "points": problem.points,
        "batch": batch,
        "dtype": dtype_name,
        "locations": locations,
        "mode": mode,
        "device": args.device,
    }
    for backend in BACKENDS:
        inputs = make_inputs(
            problem,
            batch,
            DTYPES[dtype_name],
            args.device,
            locations,
            requires_grad=mode != "forward",
        )
        run = step_function(backend, mode, inputs)
        row[f"{backend}_s"] = median_time(run, args.device, args.warmup, args.repeat)
        del inputs, run
        row[f"{backend}_peak_bytes"] = (
            None
            if args.no_memory
            else peak_memory(
                problem, batch, dtype_name, args.device, locations, backend, mode, threads
            )
        )
    row["speedup"] = row["pytorch_s"] / row["compiled_s"]
    compiled_memory, pytorch_memory = row["compiled_peak_bytes"], row["pytorch_peak_bytes"]
    row["memory_ratio"] = (
        compiled_memory / pytorch_memory if compiled_memory and pytorch_memory else None
    )
    return row


# ------------------------------------------------------------------ main
def parse_shapes(text: str) -> tuple[tuple[int, int], ...]:
    try:
        shapes = tuple(tuple(int(v) for v in item.lower().split("x")) for item in text.split(","))
    except ValueError:
        shapes = ()
    if not shapes or any(len(s) != 2 or min(s) < 1 for s in shapes):
        raise argparse.ArgumentTypeError(f"expected shapes like '100x167,50x84', got {text!r}")
    return shapes


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--preset", nargs="+", choices=sorted(PRESETS), default=None)
    parser.add_argument("--shapes", type=parse_shapes, help="custom problem, e.g. 64x64,32x32")
    parser.add_argument("--queries", type=int, default=None, help="custom: default all positions")
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--channels", type=int, default=32, help="channels per head")
    parser.add_argument("--points", type=int, default=4)
    parser.add_argument("--batch", type=int, nargs="+", default=[1])
    parser.add_argument("--dtype", nargs="+", choices=sorted(DTYPES), default=["float32"])
    parser.add_argument(
        "--locations", nargs="+", choices=["realistic", "uniform"], default=["realistic", "uniform"]
    )
    parser.add_argument("--mode", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--no-memory", action="store_true", help="skip peak-memory measurement")
    parser.add_argument("--json", default="benchmark_msda.json", help="where to write results")
    parser.add_argument("--plot", default=None, help="write a PNG of the speedups here")
    parser.add_argument("--markdown", default=None, help="write a markdown table here")
    parser.add_argument(
        "--from-json", default=None, help="only re-render --markdown/--plot from a results JSON"
    )
    parser.add_argument("--memory-probe", default=None, help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    if args.memory_probe:
        print(cpu_peak_memory_probe(json.loads(args.memory_probe)))
        return {}
    if args.from_json:
        result = json.loads(Path(args.from_json).read_text())
        write_reports(result, None, args.markdown, args.plot)
        return result
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device not in ("cpu", "cuda"):
        raise SystemExit(f"--device must be cpu or cuda, got {args.device!r}")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda asked for, but torch sees no GPU")
    kernels = build_info()["kernels"]
    if args.device not in kernels:
        raise SystemExit(
            f"the compiled op has no {args.device} kernel (built: {kernels or 'nothing'}, "
            f"error: {build_info()['error']}); build it with `make build` first"
        )
    problems = [PRESETS[name] for name in (args.preset or ([] if args.shapes else PRESETS))]
    if args.shapes:
        problems.append(
            Problem("custom", args.shapes, args.queries, args.heads, args.channels, args.points)
        )
    threads = torch.get_num_threads()
    env = environment(args.device)
    print(
        f"MSDA benchmark on {env['device_name']} ({args.device}, {threads} threads), "
        f"torch {env['torch']}, commit {env['commit']}"
    )
    rows = []
    for problem, batch, dtype_name, locations, mode in itertools.product(
        problems, args.batch, args.dtype, args.locations, args.mode
    ):
        rows.append(measure(problem, batch, dtype_name, locations, mode, args, threads))
        print_table(rows[-1:])
    print()
    print_table(rows)
    result = {"environment": env, "warmup": args.warmup, "repeat": args.repeat, "results": rows}
    write_reports(result, args.json, args.markdown, args.plot)
    return result


def write_reports(result: dict, json_path, markdown_path, plot_path) -> None:
    for path in (json_path, markdown_path, plot_path):
        if path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
    if json_path:
        Path(json_path).write_text(json.dumps(result, indent=2))
        print(f"wrote {json_path}")
    if markdown_path:
        Path(markdown_path).write_text(markdown_table(result))
        print(f"wrote {markdown_path}")
    if plot_path:
        plot(result["results"], plot_path)


if __name__ == "__main__":
    main()
