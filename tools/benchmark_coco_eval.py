#!/usr/bin/env python
"""COCO evaluation time and agreement, pycocotools vs hotcoco, on a COCO-val-sized synthetic set.

One run generates the set once from ``--seed`` (:mod:`detr_ext.evaluation.synthetic`: 5,000
images, ~36,500 objects, 100 detections per image by default), writes its ground-truth json to
a work folder, and then, for each ``--iou-types`` and each backend, times

- ``load``: :func:`~detr_ext.evaluation.coco_backend.load_coco_gt` (parse the json, index it);
- ``evaluate``: :func:`~detr_ext.evaluation.coco_backend.evaluate_on_coco` (copy of the
  results, ``loadRes``, ``evaluate``, ``accumulate``, ``summarize``), the call
  ``COCOEvaluator`` makes.

The results go to a json next to the ground truth. Each (iou type, backend) runs in its own
process forked from the main one, so that neither backend's caches or allocator state affect
the other and its peak memory can be read: the process reads the results json (untimed), then
resets its resident-set high-water mark (``/proc/self/clear_refs``), so "peak RSS" is what
loading and evaluation added. With ``--repeats N`` every step runs N times (a fresh ground
truth each time: pycocotools converts the gt polygons to RLE in place) and the median is
reported. hotcoco runs on all cores unless ``--hotcoco-threads`` says otherwise;
pycocotools is single-threaded.

The 12 summary numbers of both backends are compared per iou type, and so is the full
precision array ``[T, R, K, A, M]``; the run exits with status 1 if either differs by more than
``--tolerance``.

Examples:
    python tools/benchmark_coco_eval.py                         # full size, bbox and segm
    python tools/benchmark_coco_eval.py --num-images 200 --output /tmp/coco_eval.json
    python tools/benchmark_coco_eval.py --iou-types bbox --repeats 3 --hotcoco-threads 1
"""

from __future__ import annotations

import argparse
import datetime
import gc
import importlib.metadata
import json
import multiprocessing
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from detr_ext.evaluation.coco_backend import (  # noqa: E402
    evaluate_on_coco,
    load_coco_gt,
    summary_stats,
)
from detr_ext.evaluation.synthetic import describe, generate_coco_set  # noqa: E402
from detr_ext.utils import atomic_write, atomic_write_json  # noqa: E402
from detr_ext.utils.cli import int_at_least  # noqa: E402
from detr_ext.utils.run_info import (  # noqa: E402
    cpu_name,
    git_commit,
    proc_status_bytes,
    reset_peak_rss,
)

BACKENDS = ("pycocotools", "hotcoco")
IOU_TYPES = ("bbox", "segm")
STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl",
              "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")  # fmt: skip
DEFAULT_OUTPUT = REPO / "benchmarks" / "results" / "coco_eval_cpu.json"


# ------------------------------------------------------------------ measurement
def _implementation(coco_eval: object) -> str:
    """Where ``coco_eval``'s class comes from, e.g. ``hotcoco.COCOeval`` (a compiled class whose
    ``__module__`` says only ``builtins``) or ``pycocotools.cocoeval.COCOeval``."""
    cls = type(coco_eval)
    for module_name in ("hotcoco", "pycocotools.cocoeval", "detectron2.evaluation.coco_evaluation"):
        if getattr(sys.modules.get(module_name), cls.__name__, None) is cls:
            return f"{module_name}.{cls.__name__}"
    return f"{cls.__module__}.{cls.__qualname__}"


def measure(backend: str, iou_type: str, gt_json: str, results_json: str, repeats: int) -> dict:
    """Time ``repeats`` x (load the gt, evaluate the results) with ``backend``.

    The results are read from ``results_json`` first (untimed), as an evaluator holds them in
    memory. Returns the times, the stats and precision array of the last evaluation, and the
    peak RSS that loading + evaluating added (bytes, or None).
    """
    with open(results_json) as file:
        results = json.load(file)
    gc.collect()
    baseline = reset_peak_rss()
    load_s, evaluate_s = [], []
    for _ in range(repeats):
        coco_gt = coco_eval = None  # the previous run's objects go before the next run
        begin = time.perf_counter()
        coco_gt = load_coco_gt(gt_json, backend)
        loaded = time.perf_counter()
        coco_eval = evaluate_on_coco(coco_gt, results, iou_type, backend, print_summary=False)
        evaluate_s.append(time.perf_counter() - loaded)
        load_s.append(loaded - begin)
    peak = proc_status_bytes("VmHWM")
    return {
        "load_s": load_s,
        "evaluate_s": evaluate_s,
        "evaluator": _implementation(coco_eval),
        "stats": summary_stats(coco_eval).tolist(),
        "precision": np.asarray(coco_eval.eval["precision"], dtype=np.float64),
        "peak_rss_bytes": None if baseline is None or peak is None else peak - baseline,
    }


def _measure_in_child(connection, backend, iou_type, gt_json, results_json, repeats, threads):
    try:
        if threads is not None:
            # Read by hotcoco's thread pool (rayon) when it first starts, i.e. in this process.
            os.environ["RAYON_NUM_THREADS"] = str(threads)
        connection.send(("ok", measure(backend, iou_type, gt_json, results_json, repeats)))
    except Exception:  # sent back to the parent, which raises it with the step named
        connection.send(("error", traceback.format_exc()))
    finally:
        connection.close()


def measure_isolated(
    backend: str,
    iou_type: str,
    gt_json: str,
    results_json: str,
    repeats: int,
    hotcoco_threads: int | None,
) -> dict:
    """:func:`measure` in a process forked from this one (which already imported everything,
    and holds no dataset: a child touching the parent's objects would copy their pages on
    write, in the timed code); in this process where ``fork`` does not exist."""
    threads = hotcoco_threads if backend == "hotcoco" else None
    if "fork" not in multiprocessing.get_all_start_methods():
        row = measure(backend, iou_type, gt_json, results_json, repeats)
        return row | {"peak_rss_bytes": None}
    context = multiprocessing.get_context("fork")
    receiver, sender = context.Pipe(duplex=False)
    child = context.Process(
        target=_measure_in_child,
        args=(sender, backend, iou_type, gt_json, results_json, repeats, threads),
    )
    child.start()
    sender.close()
    try:
        status, payload = receiver.recv()
    except EOFError:  # killed (e.g. out of memory) before it could answer
        child.join()
        status, payload = "error", f"the measuring process died (exit code {child.exitcode})"
    child.join()
    if status != "ok":
        raise RuntimeError(f"{backend} {iou_type} evaluation failed:\n{payload}")
    return payload


# ------------------------------------------------------------------ reporting
def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def environment(hotcoco_threads: int | None) -> dict:
    """Machine, package versions, commit and date of this run."""
    cpu = cpu_name()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu": cpu,
        "cores": cores,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": _version("torch"),
        "pycocotools": _version("pycocotools"),
        "hotcoco": _version("hotcoco"),
        "hotcoco_threads": hotcoco_threads or f"default (all {cores} cores)",
        "commit": git_commit(REPO),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "load_average_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def compare(by_backend: dict[str, dict]) -> dict:
    """Both backends' 12 summary numbers side by side, their largest difference and that of
    the precision arrays, and the speedups of hotcoco over pycocotools."""
    reference, candidate = by_backend["pycocotools"], by_backend["hotcoco"]
    stats_ref, stats_new = np.array(reference["stats"]), np.array(candidate["stats"])
    # The arrays leave the rows here: the JSON keeps only their comparison.
    prec_ref, prec_new = reference.pop("precision"), candidate.pop("precision")
    precision_diff = (
        float(np.abs(prec_ref - prec_new).max()) if prec_ref.shape == prec_new.shape else None
    )
    speedup = {
        step: reference[f"{step}_median_s"] / candidate[f"{step}_median_s"]
        for step in ("load", "evaluate", "total")
    }
    return {
        "stats": {
            name: {"pycocotools": ref, "hotcoco": new, "abs_diff": abs(ref - new)}
            for name, ref, new in zip(STAT_NAMES, stats_ref.tolist(), stats_new.tolist())
        },
        "max_abs_diff": float(np.abs(stats_ref - stats_new).max()),
        "precision_shapes": [list(prec_ref.shape), list(prec_new.shape)],
        "precision_max_abs_diff": precision_diff,
        "speedup_hotcoco_over_pycocotools": speedup,
    }


def _mib(value: int | None) -> str:
    return "n/a" if value is None else f"{value / 2**20:.0f}"


def markdown(result: dict) -> str:
    """The run as markdown: data and machine, a timing table, and per iou type the table of
    the 12 summary numbers of both backends."""
    env, data, config = result["environment"], result["dataset"], result["config"]
    areas = data["area_fractions"]
    repeats = config["repeats"]
    lines = [
        "# COCO evaluation: pycocotools vs hotcoco",
        "",
        f"Synthetic COCO-val-sized set (seed {config['seed']}, "
        "`detr_ext/evaluation/synthetic.py`): "
        f"{data['images']} images ({data['images_without_objects']} without objects), "
        f"{data['objects']} objects ({data['objects_per_image']:.2f} per image, "
        f"{data['crowd']} crowd), {data['categories']} categories with COCO's ids, area "
        f"small/medium/large {areas['small']:.0%}/{areas['medium']:.0%}/{areas['large']:.0%}; "
        f"{config['dets_per_image']} detections per image ({data['detections']} in all, "
        "segm as compressed RLE).",
        "",
        f"Machine: {env['cpu']}, {env['cores']} cores; Python {env['python']}, torch "
        f"{env['torch']}, pycocotools {env['pycocotools']}, hotcoco {env['hotcoco']} "
        f"(threads: {env['hotcoco_threads']}); commit {env['commit']}; {env['date']}. "
        f"Load average at start / end: {_loads(env['load_average_start'])} / "
        f"{_loads(result['load_average_end'])}.",
        "",
        f"Seconds, {'median of ' + str(repeats) + ' runs' if repeats > 1 else 'one run'} each; "
        "each (iou type, backend) in its own process. load = `load_coco_gt`, evaluate = "
        "`evaluate_on_coco` (copy of the results + loadRes + evaluate + accumulate + "
        "summarize); peak RSS = memory added by load + evaluate.",
        "",
        "| iou type | backend | load s | evaluate s | total s | peak RSS MiB "
        "| speedup load | speedup evaluate | speedup total |",
        "| --- | --- | --: | --: | --: | --: | --: | --: | --: |",
    ]
    for iou_type, entry in result["results"].items():
        speedup = entry["comparison"]["speedup_hotcoco_over_pycocotools"]
        for backend in BACKENDS:
            row = entry[backend]
            ratios = (
                [f"{speedup[step]:.1f}x" for step in ("load", "evaluate", "total")]
                if backend == "hotcoco"
                else ["", "", ""]
            )
            lines.append(
                f"| {iou_type} | {backend} | {row['load_median_s']:.2f} "
                f"| {row['evaluate_median_s']:.2f} | {row['total_median_s']:.2f} "
                f"| {_mib(row['peak_rss_bytes'])} | " + " | ".join(ratios) + " |"
            )
    for iou_type, entry in result["results"].items():
        comparison = entry["comparison"]
        lines += [
            "",
            f"## {iou_type}: summary numbers",
            "",
            "| metric | pycocotools | hotcoco | abs diff |",
            "| --- | --: | --: | --: |",
        ]
        for name, values in comparison["stats"].items():
            lines.append(
                f"| {name} | {values['pycocotools']:.6f} | {values['hotcoco']:.6f} "
                f"| {values['abs_diff']:.1e} |"
            )
        precision = comparison["precision_max_abs_diff"]
        lines += [
            "",
            f"Max abs difference: summary numbers {comparison['max_abs_diff']:.1e}, precision "
            f"array {comparison['precision_shapes'][0]} "
            f"{'shapes differ' if precision is None else f'{precision:.1e}'}.",
        ]
    if result.get("note"):
        lines += ["", f"Note: {result['note']}"]
    return "\n".join(lines) + "\n"


def _loads(values: list[float] | None) -> str:
    return "n/a" if values is None else ", ".join(f"{v:.1f}" for v in values)


# ------------------------------------------------------------------ main
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--num-images", type=int_at_least(1), default=5000)
    parser.add_argument("--dets-per-image", type=int_at_least(1), default=100)
    parser.add_argument("--iou-types", nargs="+", choices=IOU_TYPES, default=list(IOU_TYPES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--repeats", type=int_at_least(1), default=1, help="runs per step; median reported"
    )
    parser.add_argument(
        "--hotcoco-threads",
        type=int_at_least(1),
        default=None,
        help="hotcoco's threads (default: all)",
    )
    parser.add_argument(
        "--output", default=str(DEFAULT_OUTPUT), help="JSON path; the .md is written next to it"
    )
    parser.add_argument(
        "--work-dir", default=None, help="folder for the gt json (default: a temporary one)"
    )
    parser.add_argument("--tolerance", type=float, default=1e-12, help="allowed stats difference")
    parser.add_argument("--note", default="", help="a line added to the markdown")
    return parser


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark; returns what it writes to ``--output`` (JSON) and its .md."""
    parser = build_parser()
    args = parser.parse_args(argv)
    result = {"environment": environment(args.hotcoco_threads)}
    result["config"] = {
        key: getattr(args, key)
        for key in ("num_images", "dets_per_image", "iou_types", "seed", "repeats", "tolerance")
    }

    begin = time.perf_counter()
    synthetic = generate_coco_set(args.num_images, args.dets_per_image, args.seed)
    result["dataset"] = describe(synthetic.gt) | {
        "detections": len(synthetic.results),
        "generate_s": time.perf_counter() - begin,
    }
    print(f"generated in {result['dataset']['generate_s']:.1f} s: {result['dataset']}")

    with tempfile.TemporaryDirectory(prefix="coco_eval_bench_") as temporary:
        work_dir = Path(args.work_dir or temporary)
        work_dir.mkdir(parents=True, exist_ok=True)
        gt_json = str(work_dir / f"synthetic_gt_n{args.num_images}_seed{args.seed}.json")
        # Both sets go to json and out of this process's memory: each measuring process reads
        # its own copy.
        results_json = str(work_dir / f"synthetic_results_n{args.num_images}_seed{args.seed}.json")
        atomic_write_json(gt_json, synthetic.gt)
        atomic_write_json(results_json, synthetic.results)
        del synthetic
        gc.collect()

        result["results"] = {}
        for iou_type in args.iou_types:
            entry = {}
            for backend in BACKENDS:
                row = measure_isolated(
                    backend, iou_type, gt_json, results_json, args.repeats, args.hotcoco_threads
                )
                for step in ("load", "evaluate"):
                    row[f"{step}_median_s"] = statistics.median(row[f"{step}_s"])
                row["total_median_s"] = statistics.median(
                    load + evaluate for load, evaluate in zip(row["load_s"], row["evaluate_s"])
                )
                entry[backend] = row
                print(
                    f"{iou_type:<5} {backend:<12} load {row['load_median_s']:8.2f} s  "
                    f"evaluate {row['evaluate_median_s']:8.2f} s  "
                    f"peak RSS {_mib(row['peak_rss_bytes'])} MiB",
                    flush=True,
                )
            entry["comparison"] = compare(entry)
            result["results"][iou_type] = entry

    result["load_average_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    result["note"] = args.note
    comparisons = [entry["comparison"] for entry in result["results"].values()]
    differences = [c["max_abs_diff"] for c in comparisons] + [
        np.inf if c["precision_max_abs_diff"] is None else c["precision_max_abs_diff"]
        for c in comparisons
    ]  # a precision shape mismatch counts as a difference
    worst = max(differences)
    result["equal"] = worst <= args.tolerance

    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(output, result, indent=2)
    text = markdown(result)
    atomic_write(output.with_suffix(".md"), lambda file: file.write(text), mode="w")
    print(text)
    print(f"wrote {output} and {output.with_suffix('.md')}")
    if not result["equal"]:
        print(
            f"the backends' summary numbers or precision arrays differ by up to {worst:.3g} "
            f"(> --tolerance {args.tolerance})",
            file=sys.stderr,
        )
    return result


if __name__ == "__main__":
    sys.exit(0 if main()["equal"] else 1)
