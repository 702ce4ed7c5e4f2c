"""The MSDA kernels alone against their DRAM floor (``tools/gpu_check.py kernels``): the forward
and backward ops (``torch.ops.detr_ext``, no Python front or autograd) timed by CUDA-graph replay
for the issue's problems and each kernel group order (``DETR_EXT_MSDA_QUERY_TILE``), with the
fewest bytes each must move and its time over the floor those bytes take at a given bandwidth.
Every run's memory is poisoned first and every output checked to be written; the orders must
give the same forward, bit for bit. Every row times the kernels' defaults (the forward gathering
through byte offsets, the half-precision backward in packs of 4 channels); the element-offset
gather of ``DETR_EXT_MSDA_FORWARD_LEAN=0`` is compared in the cuda tests and profiled by
``tools/gpu_check.py profile``. Torch only, like the rest of :mod:`detr_ext.ops`."""

from __future__ import annotations

import os

import torch

from .benchmark import DTYPES, PRESETS, make_inputs, poison_cuda_allocator
from .gpu_timing import graph_seconds, nbytes

__all__ = [
    "ALL_TILES",
    "KERNEL_ROWS",
    "LEAN_ENV",
    "TILE_ENV",
    "kernel_inputs",
    "run_row",
    "set_tile",
]

TILE_ENV = "DETR_EXT_MSDA_QUERY_TILE"
LEAN_ENV = "DETR_EXT_MSDA_FORWARD_LEAN"

# (preset, batch, dtype, coordinate dtype, locations, query tiles): the kernels step's rows; each
# row is timed at every tile, the first (1, the default order) the reference of the others.
ALL_TILES = (1, 4, 8, 16, 32, 64)
KERNEL_ROWS = [
    ("encoder", 2, "float32", "float32", "realistic", ALL_TILES),
    ("encoder", 2, "float16", "float32", "realistic", ALL_TILES),
    ("encoder", 2, "bfloat16", "float32", "realistic", ALL_TILES),
    ("encoder", 2, "bfloat16", "bfloat16", "realistic", ALL_TILES),
    ("encoder", 2, "float16", "float16", "realistic", (1, 32, 64)),
    ("encoder", 2, "float32", "float32", "uniform", (1, 32)),
    ("encoder", 1, "float32", "float32", "realistic", (1, 32)),
    ("encoder", 8, "float32", "float32", "realistic", (1, 32)),
    ("decoder", 2, "float32", "float32", "realistic", (1, 8, 32)),
    ("decoder", 2, "bfloat16", "float32", "realistic", (1, 8, 32)),
]


def set_tile(tile: int | None, lean: int | None = None) -> None:
    """Set (or with ``None``, unset: the default) the kernels' group order and the forward's
    gather (1: byte offsets, 0: element offsets)."""
    settings = {TILE_ENV: tile, LEAN_ENV: lean}
    for name, value in settings.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = str(value)


def kernel_inputs(preset, batch, dtype, coord_dtype, locations, seed):
    value, shapes, starts, loc, weights = make_inputs(
        PRESETS[preset], batch, DTYPES[dtype], "cuda", locations, seed=seed
    )
    return value, shapes, starts, loc.to(DTYPES[coord_dtype]), weights.to(DTYPES[coord_dtype])


def run_row(row, bandwidth: float) -> list[dict]:
    """One of ``KERNEL_ROWS``: a result per query tile (times, bytes, floors, checks)."""
    preset, batch, dtype, coord_dtype, locations, tiles = row
    ops = torch.ops.detr_ext
    sets = [kernel_inputs(preset, batch, dtype, coord_dtype, locations, seed) for seed in range(3)]
    value, shapes, starts, loc, weights = sets[0]
    grad_output = torch.randn(
        value.shape[0], loc.shape[1], value.shape[2] * value.shape[3], device="cuda"
    ).to(value.dtype)
    out_bytes = nbytes(grad_output)
    forward_bytes = nbytes(value, loc, weights) + out_bytes
    # Backward: grad_output, value, locations, weights read; the three gradients written.
    backward_bytes = out_bytes + 2 * nbytes(value, loc, weights)
    results, reference = [], None
    for tile in tiles:
        set_tile(tile)
        poison_cuda_allocator(4 * forward_bytes)
        output = ops.ms_deform_attn(value, shapes, starts, loc, weights)
        grads = ops.ms_deform_attn_backward(grad_output, value, shapes, starts, loc, weights)
        torch.cuda.synchronize()
        written = not any(t.isnan().any() for t in (output, *grads))
        if reference is None:
            reference = (output, *grads)
            same_forward, grad_error = True, 0.0
        else:
            same_forward = torch.equal(output, reference[0])
            grad_error = max(
                float((got.double() - want.double()).abs().max() / want.double().abs().max())
                for got, want in zip(grads, reference[1:])
            )
        forward_s, method = graph_seconds(lambda i: ops.ms_deform_attn(*sets[i]), len(sets))
        backward_s, _ = graph_seconds(
            lambda i: ops.ms_deform_attn_backward(grad_output, *sets[i]), len(sets)
        )
        entry = {
            "preset": preset,
            "batch": batch,
            "dtype": dtype,
            "coord_dtype": coord_dtype,
            "locations": locations,
            "query_tile": tile,
            "forward_s": forward_s,
            "backward_s": backward_s,
            "forward_bytes": forward_bytes,
            "backward_bytes": backward_bytes,
            "forward_floor_s": forward_bytes / bandwidth,
            "backward_floor_s": backward_bytes / bandwidth,
            "forward_over_floor": forward_s * bandwidth / forward_bytes,
            "backward_over_floor": backward_s * bandwidth / backward_bytes,
            "all_outputs_written": written,
            "forward_equals_tile_1": same_forward,
            "max_grad_difference_to_tile_1": grad_error,
            "timing": method,
        }
        results.append(entry)
        print(
            f"{preset:<8} B{batch} {dtype:<8} coords {coord_dtype:<8} {locations:<9} T={tile:<3} "
            f"fwd {forward_s * 1e6:8.1f} us ({entry['forward_over_floor']:5.2f}x floor)  "
            f"bwd {backward_s * 1e6:8.1f} us ({entry['backward_over_floor']:5.2f}x floor)  "
            f"written={written} same_fwd={same_forward} grad_diff={grad_error:.1e}",
            flush=True,
        )
    set_tile(None)
    return results
