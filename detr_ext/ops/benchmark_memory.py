"""Peak memory of one warm MSDA benchmark step beyond its inputs (:func:`peak_memory`): on CUDA
``torch.cuda.max_memory_allocated``; on CPU the resident-set high-water mark of a fresh process
(``python -m detr_ext.ops.benchmark_memory <spec>``, :func:`cpu_peak_memory_probe`), reset via
Linux's ``/proc/self/clear_refs`` once the inputs exist and a first call ran, so that allocator
caches of earlier runs cannot hide allocations. Torch and the standard library only, like the
rest of :mod:`detr_ext.ops`."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path

import torch

from ..utils.run_info import peak_rss_probe, proc_status_bytes, reset_peak_rss
from .benchmark import DTYPES, Problem, make_inputs
from .benchmark_steps import clear_grads, step_function

__all__ = ["cpu_peak_memory_probe", "peak_memory"]

# The directory holding the detr_ext package: the probe process starts there, so that it
# imports this same detr_ext whatever the caller's working directory and sys.path.
_PACKAGE_PARENT = Path(__file__).resolve().parents[2]


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
    # A warm step: the first call's one-time costs (kernel / thread-pool setup, about 35 MiB
    # for forward+backward) are not the step's memory.
    run()
    clear_grads(inputs)
    baseline = reset_peak_rss()  # the high-water mark is now the current RSS
    run()
    return proc_status_bytes("VmHWM") - baseline


def peak_memory(
    problem, batch, dtype_name, device, locations, backend, mode, threads
) -> int | None:
    """Bytes one warm ``mode`` step of ``backend`` allocates beyond its inputs (``None`` on a
    CPU without ``/proc/self/clear_refs``, or when the probe process failed)."""
    if device == "cuda":
        inputs = make_inputs(
            problem, batch, DTYPES[dtype_name], device, locations, requires_grad=mode != "forward"
        )
        run = step_function(backend, mode, inputs)
        run()  # the first call may allocate workspace that later calls reuse
        clear_grads(inputs)  # else the step frees and reallocates them, unseen by the peak
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        baseline = torch.cuda.memory_allocated()
        run()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - baseline
    spec = {
        "problem": asdict(problem),
        "batch": batch,
        "dtype": dtype_name,
        "locations": locations,
        "backend": backend,
        "mode": mode,
        "threads": threads,
    }
    command = [sys.executable, "-m", __name__, json.dumps(spec)]
    return peak_rss_probe(command, "memory probe", cwd=_PACKAGE_PARENT)


if __name__ == "__main__":
    print(cpu_peak_memory_probe(json.loads(sys.argv[1])))
