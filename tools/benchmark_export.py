#!/usr/bin/env python
"""Benchmark the exported detectors on the CPU: fidelity and latency of every format.

    python tools/benchmark_export.py                        # every case and format (slow)
    python tools/benchmark_export.py --quick                # DETR shapes, 2 runs: a smoke test
    python tools/benchmark_export.py --cases dino_shapes dino_r50_4scale \
        --formats torch_export onnx --runs 10

For each case (a project's shapes model, and DINO-R50 4-scale at 800x1333, all with random
weights, seed 0) it exports one ``ExportedProgram`` and from it an AOTInductor package and an
ONNX model, then times, in the same process on the same input (one image, no padding), the
eager model, the exported program, the AOTInductor package and onnxruntime (median of
``--runs`` after ``--warmup``), and reports each format's largest difference from eager:
boxes (pixels), scores, classes. Random weights make two-stage query selection sensitive to
rounding (near-equal encoder scores), so the eager model's own float32-vs-float64 difference
on that input is reported next to them, on the eager row. Writes
``<output-dir>/<name>.json`` and ``.md``: by default ``benchmarks/results/export_cpu`` (the
committed results), with ``--quick`` ``output/benchmark_export/export_cpu`` (a smoke test
leaves the committed results alone).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from detr_ext.ops.benchmark import environment as msda_environment  # noqa: E402
from detr_ext.ops.benchmark import median_time  # noqa: E402
from detr_ext.utils.cli import int_at_least  # noqa: E402

FORMATS = ("torch_export", "aoti", "onnx")
# name -> (config file, overrides, input (H, W)): the shapes sizes are the configs' test
# resize of a 4:3 image.
CASES: dict[str, tuple[str, tuple[str, ...], tuple[int, int]]] = {
    "detr_shapes": ("projects/detr/configs/detr_shapes.py", (), (288, 384)),
    "deformable_detr_shapes": (
        "projects/deformable_detr/configs/deformable_detr_shapes.py",
        (),
        (320, 427),
    ),
    "deformable_detr_two_stage_shapes": (
        "projects/deformable_detr/configs/deformable_detr_shapes.py",
        ("model.with_box_refine=True", "model.as_two_stage=True"),
        (320, 427),
    ),
    "dino_shapes": ("projects/dino/configs/dino_shapes.py", (), (224, 298)),
    "align_detr_shapes": ("projects/align_detr/configs/align_detr_shapes.py", (), (224, 298)),
    "dino_r50_4scale": ("projects/dino/configs/dino_r50_4scale_12ep.py", (), (800, 1333)),
}
# Smallest exported image side per case (default DEFAULT_MIN_SIZE): DINO-R50 4-scale's
# stride-64 level is a 1x1 map at 64 px, which torch.export refuses to keep dynamic.
MIN_SIZES = {"dino_r50_4scale": 128}


def environment() -> dict:
    """Device, threads, versions (torch, ONNX packages), commit and extension build of this
    run."""
    versions = {}
    for package in ("onnx", "onnxruntime", "onnxscript"):
        try:
            versions[package] = __import__(package).__version__
        except ImportError:
            versions[package] = None
    return {**msda_environment("cpu"), **versions}


def measure_case(name: str, formats: Sequence[str], args, work_dir: Path) -> list[dict]:
    """One case: the eager row and one row per format."""
    import copy

    from detectron2.config import LazyConfig

    from detr_ext.export import (
        ExportableDetector,
        build_model,
        compare_outputs,
        export_model,
        export_program,
        load_exported,
    )

    config_file, overrides, (height, width) = CASES[name]
    cfg = LazyConfig.apply_overrides(LazyConfig.load(str(REPO / config_file)), list(overrides))
    model = build_model(cfg, None, "cpu", seed=0)
    eager = ExportableDetector(model)
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(1, 3, height, width, generator=generator)
    image_sizes = torch.tensor([[height, width]])
    rows: list[dict] = []

    def row(fmt: str, seconds: float, build: float | None, diff: dict | None) -> dict:
        return {
            "case": name,
            "input": f"{height}x{width}",
            "format": fmt,
            "latency_ms": 1e3 * seconds,
            "build_s": build,
            "max_abs_diff_boxes_px": None if diff is None else diff["boxes"],
            "max_abs_diff_scores": None if diff is None else diff["scores"],
            "classes_differing": None if diff is None else diff["classes_differing"],
        }

    with torch.no_grad():
        expected = eager(images, image_sizes)
        eager_seconds = median_time(
            lambda: eager(images, image_sizes), "cpu", args.warmup, args.runs
        )
        reference = ExportableDetector(copy.deepcopy(model).double())(images.double(), image_sizes)
    eager_row = row("eager", eager_seconds, None, compare_outputs(reference, expected))
    eager_row["note"] = "differences: eager float32 vs eager float64 (rounding sensitivity)"
    rows.append(eager_row)
    print(f"{name}: eager {1e3 * eager_seconds:.1f} ms", flush=True)

    begin = time.perf_counter()
    sizes = {"example_size": args.example_size}
    if name in MIN_SIZES:
        sizes["min_size"] = MIN_SIZES[name]
    program = export_program(model, **sizes)
    export_seconds = time.perf_counter() - begin
    for fmt in formats:
        begin = time.perf_counter()
        if fmt == "torch_export":
            run = program.module()
            build = export_seconds
        else:
            suffix = ".onnx" if fmt == "onnx" else ".aoti.pt2"
            path = work_dir / f"{name}{suffix}"
            export_model(model, path, fmt, program=program, **sizes)
            build = export_seconds + time.perf_counter() - begin
            options = {"threads": torch.get_num_threads()} if fmt == "onnx" else {}
            run = load_exported(path, **options)
        with torch.no_grad():
            actual = run(images, image_sizes)
            seconds = median_time(
                lambda run=run: run(images, image_sizes), "cpu", args.warmup, args.runs
            )
        rows.append(row(fmt, seconds, build, compare_outputs(expected, actual)))
        print(
            f"{name}: {fmt} {1e3 * seconds:.1f} ms (built in {build:.0f} s), max |boxes| diff "
            f"{rows[-1]['max_abs_diff_boxes_px']:.3g} px",
            flush=True,
        )
    return rows


def _number(value: float | None, digits: str = ".3g") -> str:
    return "" if value is None else format(value, digits)


def markdown_table(result: dict) -> str:
    env = result["environment"]
    lines = [
        f"Export benchmark on {env['device_name']} (cpu, {env['threads']} threads), torch "
        f"{env['torch']}, onnxruntime {env['onnxruntime']}, commit {env['commit']}; median of "
        f"{result['runs']} runs after {result['warmup']} warm-up runs, one image, random "
        "weights. Differences are the format's vs eager float32; on the eager rows, eager "
        "float32 vs float64 (how sensitive the input is to rounding).",
        "",
        "| case | input | format | latency ms | vs eager | max abs diff boxes (px) | "
        "max abs diff scores | classes differing | export + build s |",
        "| --- | --- | --- | --: | --: | --: | --: | --: | --: |",
    ]
    eager = {row["case"]: row["latency_ms"] for row in result["rows"] if row["format"] == "eager"}
    for row in result["rows"]:
        speedup = eager[row["case"]] / row["latency_ms"]
        lines.append(
            f"| {row['case']} | {row['input']} | {row['format']} | {row['latency_ms']:.1f} | "
            f"{speedup:.2f}x | {_number(row['max_abs_diff_boxes_px'])} | "
            f"{_number(row['max_abs_diff_scores'])} | {_number(row['classes_differing'], 'd')} | "
            f"{_number(row['build_s'], '.0f')} |"
        )
    return "\n".join(lines) + "\n"


def default_output_dir(quick: bool) -> Path:
    """Where the reports go without ``--output-dir``: the committed results for a full run,
    ``output/`` (ignored by git) for a ``--quick`` smoke test."""
    if quick:
        return REPO / "output" / "benchmark_export"
    return REPO / "benchmarks" / "results"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", nargs="+", choices=sorted(CASES), default=list(CASES))
    parser.add_argument("--formats", nargs="+", choices=FORMATS, default=list(FORMATS))
    parser.add_argument("--runs", type=int_at_least(1), default=5, help="timed runs (median)")
    parser.add_argument("--warmup", type=int_at_least(0), default=2, help="untimed runs first")
    parser.add_argument(
        "--threads", type=int_at_least(1), default=None, help="torch / onnxruntime threads"
    )
    parser.add_argument(
        "--example-size", type=int_at_least(32), nargs=2, default=(320, 416), metavar=("H", "W"),
        help="size of the example batch traced",
    )  # fmt: skip
    parser.add_argument(
        "--quick",
        action="store_true",
        help="detr_shapes only, torch_export and onnx, 2 runs after 1 warm-up: a smoke test "
        "(reports to output/benchmark_export/ unless --output-dir says otherwise)",
    )
    parser.add_argument(
        "--output-dir",
        default=None,
        help="folder for <name>.json and <name>.md (default: benchmarks/results, the committed "
        "results; with --quick output/benchmark_export)",
    )
    parser.add_argument("--name", default="export_cpu", help="file name of the reports")
    return parser


def main(argv: Sequence[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    if args.quick:
        args.cases, args.runs, args.warmup = ["detr_shapes"], 2, 1
        args.formats = [fmt for fmt in args.formats if fmt != "aoti"]
    if args.threads:
        torch.set_num_threads(args.threads)
    result = {
        "environment": environment(),
        "runs": args.runs,
        "warmup": args.warmup,
        "example_size": list(args.example_size),
        "rows": [],
    }
    with tempfile.TemporaryDirectory() as work_dir:
        for name in args.cases:
            result["rows"].extend(measure_case(name, args.formats, args, Path(work_dir)))
    output = default_output_dir(args.quick) if args.output_dir is None else Path(args.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    (output / f"{args.name}.json").write_text(json.dumps(result, indent=1) + "\n")
    table = markdown_table(result)
    (output / f"{args.name}.md").write_text(table)
    print(table)
    return result


if __name__ == "__main__":
    main()
