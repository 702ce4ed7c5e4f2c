"""Timing helpers for CUDA kernels (``tools/gpu_check.py``): CUDA-graph replay timing that
rotates among input sets, the device's copy bandwidth (the ceiling a memory-bound kernel's
floor is computed from), the device's properties, and byte counts. Torch only, like the rest
of :mod:`detr_ext.ops`."""

from __future__ import annotations

import statistics
import sys

import torch

__all__ = ["copy_bandwidth", "device_properties", "graph_seconds", "nbytes"]


def graph_seconds(
    launch, sets: int, launches: int = 12, replays: int = 15, graph: bool = True
) -> tuple[float, str]:
    """Median seconds of one ``launch(i)`` (``i`` cycling over ``sets`` input sets, so that one
    set is not served from L2), timed by replaying a CUDA graph of ``launches`` launches; a plain
    loop of launches if capture fails or ``graph`` is false. Returns (seconds, "graph" or
    "loop")."""
    for i in range(sets):
        launch(i)
    torch.cuda.synchronize()
    method = "graph"
    try:
        if not graph:
            raise RuntimeError("not asked for")
        graph = torch.cuda.CUDAGraph()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            launch(0)
        torch.cuda.current_stream().wait_stream(stream)
        with torch.cuda.graph(graph):
            for i in range(launches):
                launch(i % sets)
        run = graph.replay
    except RuntimeError as error:
        if graph:
            print(f"  graph capture failed ({error}); timing a loop of launches", file=sys.stderr)
        method = "loop"

        def run():
            for i in range(launches):
                launch(i % sets)

    run()
    torch.cuda.synchronize()
    times = []
    for _ in range(replays):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3 / launches)
    return statistics.median(times), method


def nbytes(*tensors: torch.Tensor) -> int:
    """Bytes the tensors' elements take."""
    return sum(t.numel() * t.element_size() for t in tensors)


def copy_bandwidth(gib: int) -> dict:
    """The device's copy bandwidth from copies of ``gib`` GiB, each way: ``copy_`` (as a
    CUDA-graph memcpy node it ran on a copy engine, at 2.8 TB/s against 4.3 on an H200's SMs)
    and an elementwise kernel, timed as graph replays and as plain launches. The fastest is the
    ceiling (bytes read + bytes written per second); all are in ``measurements``."""
    elements = gib * 2**30 // 4
    source = torch.randn(elements, device="cuda")
    target = torch.empty_like(source)
    moved = 2 * nbytes(source)  # read once, written once
    kinds = {
        "copy_": lambda _: target.copy_(source),
        "mul_kernel": lambda _: torch.mul(source, 1.0, out=target),
    }
    measurements = []
    for name, launch in kinds.items():
        for graph in (True, False):
            seconds, method = graph_seconds(launch, 1, launches=5, replays=20, graph=graph)
            measurements.append(
                {"kind": name, "timing": method, "seconds": seconds, "bytes_per_s": moved / seconds}
            )
    best = max(measurements, key=lambda m: m["bytes_per_s"])
    result = {
        "copy_bytes_read_plus_written": moved,
        "bandwidth_bytes_per_s": best["bytes_per_s"],
        "best": best,
        "measurements": measurements,
        "properties": device_properties(),
    }
    return result


def device_properties() -> dict:
    props = torch.cuda.get_device_properties(0)
    names = ("name", "major", "minor", "multi_processor_count", "total_memory", "L2_cache_size")
    return {name: getattr(props, name, None) for name in names}
