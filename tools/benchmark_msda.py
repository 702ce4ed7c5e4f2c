#!/usr/bin/env python
"""Benchmark of the compiled multi-scale deformable attention against the PyTorch path.

For each problem (preset or custom shapes), batch size, dtype and kind of sampling locations,
both backends run forward (under no_grad) and forward+backward. Reported: median time after
warm-up (CUDA events on a GPU, around ``--burst`` steps queued back to back as a training loop
queues them, so that a step's host work overlaps the previous step's kernels; the two backends
timed in turns, so that machine load affects both alike), peak memory of one step beyond the
inputs, the largest difference between the two outputs (a row whose outputs disagree stops the
run), and the speedup and memory ratios of the compiled op over the PyTorch path, all measured
in the same run.

The PyTorch path is Deformable DETR's reference computation, one ``grid_sample`` per level and a
weighted sum (``detr_ext.ops.benchmark.grid_sample_baseline``; the library's fallback
``ms_deform_attn_pytorch`` adds non-finite handling on top). float16 / bfloat16 values are
sampled in float32 with the float32 locations the benchmark gives them (on CPU grid_sample is
wrong in reduced dtypes; on CUDA autocast runs it in the widest input dtype, and locations
rounded to bfloat16 would sample other points).

Peak memory is that of a warm step (after one untimed call, gradients cleared): on CPU in a
fresh subprocess per step (the process's RSS high-water mark is reset after the inputs exist
and the first call ran, via /proc/self/clear_refs), so allocator caches of earlier runs cannot
hide allocations; on CUDA ``torch.cuda.max_memory_allocated``.

This script is the command line, the measuring loop and the reports (table, JSON, markdown,
plot); the timed steps and their agreement are in ``detr_ext.ops.benchmark_steps``, the peak
memory probe in ``detr_ext.ops.benchmark_memory``, the inputs and timing in
``detr_ext.ops.benchmark``.

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
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from detr_ext.ops import build_info  # noqa: E402
from detr_ext.ops.benchmark import (  # noqa: E402
    DTYPES,
    PRESETS,
    Problem,
    environment,
    interleaved_median_times,
    make_inputs,
)
from detr_ext.ops.benchmark_memory import peak_memory  # noqa: E402
from detr_ext.ops.benchmark_steps import (  # noqa: E402
    BACKENDS,
    MODES,
    TOLERANCES,
    output_difference,
    step_function,
)
from detr_ext.utils.cli import int_at_least  # noqa: E402


# ------------------------------------------------------------------ reporting
def _ms(seconds: float) -> str:
    """Milliseconds with two decimals below 10 ms (GPU rows), one above."""
    milliseconds = seconds * 1e3
    return f"{milliseconds:.2f}" if milliseconds < 10 else f"{milliseconds:.1f}"


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
        f"torch {env['torch']}, commit {env['commit']}; {timing_sentence(result)}",
        "",
        "| problem | batch | dtype | locations | mode | compiled ms | PyTorch ms | speedup "
        "| compiled MiB | PyTorch MiB | memory ratio | max output difference |",
        "| --- | --: | --- | --- | --- | --: | --: | --: | --: | --: | --: | --: |",
    ]
    for row in result["results"]:
        ratio = row["memory_ratio"]
        difference = row.get("max_output_difference")  # absent in results of older versions
        lines.append(
            f"| {row['problem']} | {row['batch']} | {row['dtype']} | {row['locations']} "
            f"| {row['mode'].replace('_', '+')} | {_ms(row['compiled_s'])} "
            f"| {_ms(row['pytorch_s'])} | {row['speedup']:.1f}x "
            f"| {_mib(row['compiled_peak_bytes'])} | {_mib(row['pytorch_peak_bytes'])} "
            f"| {'n/a' if ratio is None else f'{ratio:.3f}'} "
            f"| {'n/a' if difference is None else f'{difference:.1e}'} |"
        )
    return "\n".join(lines) + "\n"


def timing_sentence(result: dict) -> str:
    """How the table's times were taken (results written before ``burst`` existed timed every
    call alone)."""
    burst = result.get("burst", 1)
    runs = f"median of {result['repeat']} runs after {result['warmup']} warm-up runs"
    if burst == 1:
        return f"{runs}, each run timed alone."
    return (
        f"{runs}; a run is {burst} steps queued back to back (the host runs ahead of the GPU, "
        f"as in a training loop), its time over {burst}."
    )


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
    difference = output_difference(problem, batch, dtype_name, args.device, locations)
    row["max_output_difference"] = difference
    if not difference <= TOLERANCES[dtype_name]:
        raise SystemExit(
            f"{problem.name} B{batch} {dtype_name} {locations}: the compiled op and the PyTorch "
            f"path disagree (max |diff| / (1 + |ref|) = {difference:.3g}, tolerance "
            f"{TOLERANCES[dtype_name]:g}); not timing a wrong result"
        )
    runs = {
        backend: step_function(
            backend,
            mode,
            make_inputs(
                problem,
                batch,
                DTYPES[dtype_name],
                args.device,
                locations,
                requires_grad=mode != "forward",
            ),
        )
        for backend in BACKENDS
    }
    times = interleaved_median_times(runs, args.device, args.warmup, args.repeat, args.burst)
    del runs
    for backend in BACKENDS:
        row[f"{backend}_s"] = times[backend]
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
    parser.add_argument(
        "--queries", type=int_at_least(1), default=None, help="custom: default all positions"
    )
    parser.add_argument("--heads", type=int_at_least(1), default=8)
    parser.add_argument("--channels", type=int_at_least(1), default=32, help="channels per head")
    parser.add_argument("--points", type=int_at_least(1), default=4)
    parser.add_argument("--batch", type=int_at_least(1), nargs="+", default=[1])
    parser.add_argument("--dtype", nargs="+", choices=sorted(DTYPES), default=["float32"])
    parser.add_argument(
        "--locations", nargs="+", choices=["realistic", "uniform"], default=["realistic", "uniform"]
    )
    parser.add_argument("--mode", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--threads", type=int_at_least(1), default=None, help="CPU threads (default: torch's)"
    )
    parser.add_argument("--warmup", type=int_at_least(0), default=2)
    parser.add_argument("--repeat", type=int_at_least(1), default=5)
    parser.add_argument(
        "--burst",
        type=int_at_least(1),
        default=None,
        help="calls per timed interval (default: 10 on cuda, 1 on cpu). On a GPU the host queues\n"
        "them back to back, as a training loop does, so a step's Python and autograd work\n"
        "overlaps the previous step's kernels; 1 times each step alone from an idle GPU",
    )
    parser.add_argument("--no-memory", action="store_true", help="skip peak-memory measurement")
    parser.add_argument(
        "--json", default="output/benchmark_msda.json", help="where to write results"
    )
    parser.add_argument("--plot", default=None, help="write a PNG of the speedups here")
    parser.add_argument("--markdown", default=None, help="write a markdown table here")
    parser.add_argument(
        "--from-json", default=None, help="only re-render --markdown/--plot from a results JSON"
    )
    return parser


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    if args.from_json:
        if not Path(args.from_json).is_file():
            raise SystemExit(f"--from-json: expected a results JSON file, got {args.from_json!r}")
        result = json.loads(Path(args.from_json).read_text())
        write_reports(result, None, args.markdown, args.plot)
        return result
    if args.threads is not None:
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
    if args.burst is None:
        args.burst = 10 if args.device == "cuda" else 1
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
    result = {
        "environment": env,
        "warmup": args.warmup,
        "repeat": args.repeat,
        "burst": args.burst,
        "results": rows,
    }
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
