#!/usr/bin/env python
"""Measurements of the MSDA CUDA kernels on a GPU, the Python half of ``tools/gpu_check.sh``.

Needs torch and a CUDA build of ``detr_ext._C`` only (no detectron2). Subcommands:

- ``bandwidth``: the device's copy bandwidth, a large device-to-device copy, counting the bytes
  read plus the bytes written (the ceiling the kernels' DRAM floor is computed from).
- ``kernels``: the forward and backward kernels alone (``torch.ops.detr_ext``, no Python front
  or autograd), timed by CUDA-graph replay, for the issue's problems and each kernel group order
  (``DETR_EXT_MSDA_QUERY_TILE``), with the fewest bytes each must move and its time over the
  floor those bytes take at the measured bandwidth. Every run's memory is poisoned first (NaN
  bytes in the caching allocator) and every output checked to be written; the orders must give
  the same forward, bit for bit, and the same gradients within float rounding.
- ``sanitize``: small forward+backward runs of every kernel instance, for compute-sanitizer.
- ``errors``: bad input to the compiled op (a failed C++ check on CPU and on CUDA, a bad
  ``DETR_EXT_MSDA_QUERY_TILE`` or ``DETR_EXT_MSDA_FORWARD_LEAN``), each in its own process:
  each must raise a RuntimeError, not crash the process (an extension built with a compiler
  whose libstdc++ differs from the one the process loads crashes there).
- ``profile``: one launch of each encoder kernel that matters, for ncu.
- ``trace``: where an end-to-end forward+backward step (``tools/benchmark_msda.py``'s, compiled
  op) spends its time besides the kernels: the step's CPU time against its GPU span when timed
  alone, its time when steps are queued back to back, and torch.profiler's tables (by CPU and
  by CUDA time) and Chrome trace.
- ``probe``: the forward against its gathers alone (``tools/gather_probe.cu``, built here with
  torch.utils.cpp_extension; :mod:`detr_ext.ops.gather_probe`): the same corners with none of the
  op's own work, in several layouts, orders and corner sizes; ``--profile``: one launch each of
  the rows that matter, for ncu.
- ``report``: a markdown summary of the JSON the others wrote.

    python tools/gpu_check.py bandwidth --json out/bandwidth.json
    python tools/gpu_check.py kernels --bandwidth out/bandwidth.json --json out/kernels.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from detr_ext.ops.benchmark import (  # noqa: E402
    PRESETS,
    environment,
    make_inputs,
    median_time,
)
from detr_ext.ops.benchmark_kernels import (  # noqa: E402
    KERNEL_ROWS,
    kernel_inputs,
    run_row,
    set_tile,
)
from detr_ext.ops.gpu_checks import ERROR_CASES, error_case, sanitize_failures  # noqa: E402
from detr_ext.ops.gpu_timing import copy_bandwidth  # noqa: E402


def cmd_bandwidth(args) -> dict:
    result = copy_bandwidth(args.gib)
    result["environment"] = environment("cuda")
    for m in result["measurements"]:
        rate = m["bytes_per_s"] / 1e12
        print(f"{m['kind']:<10} {m['timing']:<5} {rate:.2f} TB/s (read + written)")
    best = result["best"]
    rate = best["bytes_per_s"] / 1e12
    print(f"copy bandwidth: {rate:.2f} TB/s ({best['kind']}, {best['timing']})")
    return result


def cmd_kernels(args) -> dict:
    bandwidth = json.loads(Path(args.bandwidth).read_text())["bandwidth_bytes_per_s"]
    rows = []
    for row in KERNEL_ROWS:
        rows.extend(run_row(row, bandwidth))
    failures = [
        r
        for r in rows
        if not (r["all_outputs_written"] and r["forward_equals_tile_1"])
        or not r["max_grad_difference_to_tile_1"] <= (1e-5 if r["dtype"] == "float32" else 1e-2)
    ]
    result = {"bandwidth_bytes_per_s": bandwidth, "results": rows, "failures": failures}
    if failures:
        print(f"FAILED: {len(failures)} rows with unwritten or differing outputs", file=sys.stderr)
    return result


def cmd_best_tile(args) -> None:
    """Prints the query tile with the smallest forward + backward time of encoder B2 float32.
    The files of earlier runs (up to 2026-12-04) also hold rows of kernel variants (a backward
    pack, forward unroll or gather other than that run's default, or the forward loading the
    next tile's points early); those are left out."""
    rows = json.loads(Path(args.kernels).read_text())["results"]
    candidates = [
        r
        for r in rows
        if (r["preset"], r["batch"], r["dtype"], r["locations"])
        == ("encoder", 2, "float32", "realistic")
        and r.get("half_backward_pack", 8) == 8
        and r.get("forward_unroll", 1) == 1
        and r.get("forward_lean", 0) == 0
        and r.get("forward_prefetch", 0) == 0
    ]
    print(min(candidates, key=lambda r: r["forward_s"] + r["backward_s"])["query_tile"])


def cmd_sanitize(args) -> dict:
    failures = sanitize_failures()
    print("sanitize cases:", "all agree" if not failures else failures)
    return {"failures": failures}


def cmd_errors(args) -> dict:
    import subprocess

    results = {}
    for name in ERROR_CASES:
        run = subprocess.run(
            [sys.executable, __file__, "error-case", name], capture_output=True, text=True
        )
        lines = (run.stdout + run.stderr).strip().splitlines()
        results[name] = {"exit_code": run.returncode, "last_line": lines[-1] if lines else ""}
        print(f"{name:<20} exit {run.returncode:>4}  {results[name]['last_line'][:110]}")
    failures = [name for name, result in results.items() if result["exit_code"] != 0]
    return {"cases": results, "failures": failures}


def cmd_profile(args) -> dict:
    """One launch each of the encoder's forward (float32, bfloat16) and backward (float32) per
    query tile, and each forward once more with the element-offset gather
    (``DETR_EXT_MSDA_FORWARD_LEAN=0``) at the first tile, for comparison: the launches ncu
    profiles (``-k regex:ms_deform_attn``)."""
    ops = torch.ops.detr_ext
    for dtype in ("float32", "bfloat16"):
        inputs = kernel_inputs("encoder", 2, dtype, "float32", "realistic", seed=0)
        grad_output = torch.randn(2, inputs[3].shape[1], 256, device="cuda").to(inputs[0].dtype)
        for tile in args.tiles:
            set_tile(tile)
            ops.ms_deform_attn(*inputs)
            if dtype == "float32":
                ops.ms_deform_attn_backward(grad_output, *inputs)
        set_tile(args.tiles[0], lean=0)
        ops.ms_deform_attn(*inputs)
    torch.cuda.synchronize()
    set_tile(None)
    return {"tiles": args.tiles}


def cmd_trace(args) -> dict:
    import statistics
    import time

    from detr_ext.ops.benchmark_steps import step_function

    inputs = make_inputs(
        PRESETS[args.preset], 2, torch.float32, "cuda", "realistic", requires_grad=True
    )
    run = step_function("compiled", "forward_backward", inputs)
    for _ in range(5):
        run()
    torch.cuda.synchronize()
    cpu, span = [], []
    for _ in range(20):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        begin = time.perf_counter()
        run()
        cpu.append(time.perf_counter() - begin)  # the host's time; kernels may still run
        end.record()
        end.synchronize()
        span.append(start.elapsed_time(end) / 1e3)
    # The same steps queued back to back (how tools/benchmark_msda.py times them): the host's
    # work of one step overlaps the kernels of the previous one.
    queued = median_time(run, "cuda", warmup=0, repeat=5, burst=20)
    activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=activities) as profiler:
        for _ in range(5):
            run()
            torch.cuda.synchronize()
    averages = profiler.key_averages()
    for sort in ("self_cpu_time_total", "self_device_time_total"):
        print(averages.table(sort_by=sort, row_limit=20))
    if args.trace_file:
        profiler.export_chrome_trace(args.trace_file)
    result = {
        "preset": args.preset,
        "step_cpu_s": statistics.median(cpu),
        "step_span_s": statistics.median(span),
        "step_queued_s": queued,
    }
    print(
        f"{args.preset} B2 float32 forward+backward: host {result['step_cpu_s'] * 1e6:.0f} us, "
        f"GPU span {result['step_span_s'] * 1e6:.0f} us (medians of 20), "
        f"queued 20 at a time {result['step_queued_s'] * 1e6:.0f} us per step"
    )
    return result


def cmd_probe(args) -> dict:
    from detr_ext.ops.gather_probe import build_probe, probe_markdown, run_probe

    major, minor = torch.cuda.get_device_capability()
    arch = f"{major}{minor}" + ("a" if major == 9 else "")  # sm_90a, as tools/gpu_check.sh builds
    module = build_probe(REPO / "tools" / "gather_probe.cu", arch)
    if args.profile:
        from detr_ext.ops.gather_probe import profile_launches

        profile_launches(module)
        return {}
    bandwidth = json.loads(Path(args.bandwidth).read_text())["bandwidth_bytes_per_s"]
    rows = run_probe(module, bandwidth)
    failures = [
        r
        for r in rows
        if not r.get("all_outputs_written", True) or not r.get("max_error_to_expected", 0) <= 1e-4
    ]
    result = {
        "bandwidth_bytes_per_s": bandwidth,
        "environment": environment("cuda"),
        "results": rows,
        "failures": failures,
    }
    if args.markdown:
        Path(args.markdown).write_text(probe_markdown(result))
    if failures:
        print(f"FAILED: {len(failures)} rows unwritten or off", file=sys.stderr)
    return result


def pack_note(row: dict) -> str:
    """The variant of a row of an earlier run (up to 2026-12-04) that compared the
    half-precision backward's packs, the float32 forward's unrolls, the forward's gathers or the
    forward loading the next tile's points early (``forward_prefetch``, 7615a0a). Those variants
    are gone: rows written now, like those before the variants, have none of these keys."""
    note = f", half pack {row['half_backward_pack']}" if row.get("packs_compared") else ""
    if row.get("unrolls_compared"):
        note += f", unroll {row['forward_unroll']}"
    if row.get("leans_compared"):
        note += f", lean {row['forward_lean']}"
    if row.get("forward_prefetch"):
        note += ", prefetch"
    return note


def cmd_report(args) -> None:
    """Markdown summary: bandwidth, and the kernels table at each row's best query tile."""
    bandwidth = json.loads(Path(args.bandwidth).read_text())
    kernels = json.loads(Path(args.kernels).read_text())
    env = bandwidth["environment"]
    lines = [
        f"MSDA CUDA kernels alone on {env['device_name']}, torch {env['torch']} (CUDA "
        f"{env['torch_cuda']}), commit {env['commit']}. Copy bandwidth "
        f"{bandwidth['bandwidth_bytes_per_s'] / 1e12:.2f} TB/s (read + written). Median of CUDA-"
        "graph replays; floor = fewest bytes / bandwidth.",
        "",
        "| problem | B | value | coords | locations | T | forward us | x floor | backward us "
        "| x floor |",
        "| --- | --: | --- | --- | --- | --: | --: | --: | --: | --: |",
    ]
    for r in kernels["results"]:
        lines.append(
            f"| {r['preset']} | {r['batch']} | {r['dtype']} | {r['coord_dtype']} "
            f"| {r['locations']} | {r['query_tile']}{pack_note(r)} | {r['forward_s'] * 1e6:.1f} "
            f"| {r['forward_over_floor']:.2f} | {r['backward_s'] * 1e6:.1f} "
            f"| {r['backward_over_floor']:.2f} |"
        )
    Path(args.markdown).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    bandwidth = sub.add_parser("bandwidth")
    bandwidth.add_argument("--gib", type=int, default=4)
    kernels = sub.add_parser("kernels")
    kernels.add_argument("--bandwidth", required=True)
    best = sub.add_parser("best-tile")
    best.add_argument("--kernels", required=True)
    sub.add_parser("sanitize")
    sub.add_parser("errors")
    sub.add_parser("error-case").add_argument("name", choices=ERROR_CASES)
    trace = sub.add_parser("trace")
    trace.add_argument("--preset", choices=sorted(PRESETS), default="encoder")
    trace.add_argument("--trace-file", default=None, help="write a Chrome trace here")
    profile = sub.add_parser("profile")
    profile.add_argument("--tiles", type=int, nargs="+", default=[1])
    probe = sub.add_parser("probe")
    probe.add_argument("--bandwidth", help="bandwidth.json (not needed with --profile)")
    probe.add_argument("--markdown", default=None)
    probe.add_argument("--profile", action="store_true", help="one launch of each, for ncu")
    report = sub.add_parser("report")
    report.add_argument("--bandwidth", required=True)
    report.add_argument("--kernels", required=True)
    report.add_argument("--markdown", required=True)
    for command in (
        bandwidth,
        kernels,
        sub.choices["sanitize"],
        sub.choices["errors"],
        profile,
        trace,
        probe,
    ):
        command.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    if args.command in ("best-tile", "report"):
        return (cmd_best_tile if args.command == "best-tile" else cmd_report)(args)
    if args.command == "error-case":
        print(error_case(args.name))
        return None
    if not torch.cuda.is_available():
        raise SystemExit(f"gpu_check {args.command}: torch sees no CUDA GPU")
    from detr_ext.ops import build_info

    if "cuda" not in build_info()["kernels"]:
        raise SystemExit(f"gpu_check: detr_ext._C has no CUDA kernels ({build_info()})")
    handlers = {
        "errors": cmd_errors,
        "bandwidth": cmd_bandwidth,
        "kernels": cmd_kernels,
        "sanitize": cmd_sanitize,
        "profile": cmd_profile,
        "trace": cmd_trace,
        "probe": cmd_probe,
    }
    result = handlers[args.command](args)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    if result.get("failures"):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
