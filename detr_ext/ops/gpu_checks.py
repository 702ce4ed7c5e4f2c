"""The GPU check's correctness cases (``tools/gpu_check.py sanitize`` and ``errors``): small
forward+backward runs of every CUDA kernel instance, for compute-sanitizer, and bad calls of the
compiled op that must raise a RuntimeError rather than crash the process. Torch only, like the
rest of :mod:`detr_ext.ops`; they run on a GPU (the CPU case of ``error_case`` anywhere)."""

from __future__ import annotations

import os

import torch

from .benchmark import DTYPES
from .benchmark_kernels import LEAN_ENV, TILE_ENV, set_tile

__all__ = ["ERROR_CASES", "error_case", "sanitize_failures"]


def sanitize_failures() -> list[str]:
    """Forward+backward of small problems through every kernel instance (vectorized and
    element-wise channels, all dtypes, both coordinate dtypes, several group orders, the
    forward's byte-offset gather and, with ``DETR_EXT_MSDA_FORWARD_LEAN=0``, its element-offset
    gather), checked against the float64 PyTorch path on the CPU."""
    from .reference import ms_deform_attn_pytorch

    failures = []
    # C = 32: 16-byte packs (L * P = 9 points, so the last tile of staged points is short); 30:
    # element-wise; 12: 16-byte packs in float32, element-wise in the half-precision forward and
    # packs of 4 in its backward. Only the forward output is compared here (the gradients are
    # compared in the cuda tests).
    problems = [
        (2, 5, 3, 32, ((4, 5), (2, 3), (1, 1)), 3),
        (1, 7, 2, 30, ((3, 3), (1, 2)), 2),
        (1, 4, 2, 12, ((2, 3),), 2),
    ]
    for batch, queries, heads, channels, shapes, points in problems:
        generator = torch.Generator().manual_seed(0)
        shapes_t = torch.tensor(shapes)
        n = int(shapes_t.prod(1).sum())
        starts = torch.cat([shapes_t.new_zeros(1), shapes_t.prod(1).cumsum(0)[:-1]])
        value = torch.randn(batch, n, heads, channels, generator=generator, dtype=torch.float64)
        loc_shape = (batch, queries, heads, len(shapes), points, 2)
        loc = torch.rand(loc_shape, generator=generator, dtype=torch.float64) * 1.2 - 0.1
        weights = torch.rand(loc_shape[:-1], generator=generator, dtype=torch.float64)
        expected = ms_deform_attn_pytorch(value, shapes_t, loc, weights)
        for dtype in ("float64", "float32", "float16", "bfloat16"):
            half = dtype in ("float16", "bfloat16")
            coords = ("float32", dtype) if half else (dtype,)
            # (query tile, forward gather): the defaults, another group order, and the
            # element-offset gather (the one inputs past 2^31 bytes take) where the default is
            # the byte-offset one: 16-byte packs of float32 / float16 / bfloat16, C = 32 here.
            settings = ((None, None), (3, None))
            if dtype != "float64" and channels == 32:
                settings += ((None, 0),)
            for coord_dtype, (tile, lean) in ((c, v) for c in coords for v in settings):
                set_tile(tile, lean)
                inputs = [
                    value.to("cuda", DTYPES[dtype]).requires_grad_(),
                    shapes_t.cuda(),
                    starts.cuda(),
                    loc.to("cuda", DTYPES[coord_dtype]).requires_grad_(),
                    weights.to("cuda", DTYPES[coord_dtype]).requires_grad_(),
                ]
                output = torch.ops.detr_ext.ms_deform_attn(*inputs)
                output.float().square().sum().backward()
                torch.cuda.synchronize()
                error = float((output.detach().cpu().double() - expected).abs().max())
                if not error < 0.1:
                    failures.append(
                        f"{dtype}/{coord_dtype}/T={tile}/lean={lean} C={channels}: {error}"
                    )
    set_tile(None)
    return failures


ERROR_CASES = (
    "cpu_check",
    "cuda_check",
    "cuda_backward_check",
    "cuda_query_tile",
    "cuda_forward_lean",
)


def error_case(name: str) -> str:
    """Runs one bad call of the compiled op; returns the first line of its RuntimeError."""
    from . import build_info  # detr_ext.ops loads detr_ext._C, which registers the op

    if not build_info()["extension_loaded"]:
        raise SystemExit(f"gpu_check: detr_ext._C is not loaded ({build_info()['error']})")
    device = "cpu" if name.startswith("cpu") else "cuda"
    value = torch.randn(1, 20, 2, 8, device=device)
    shapes = torch.tensor([[4, 5]], device=device)
    starts = torch.tensor([0], device=device)
    locations = torch.rand(1, 3, 2, 1, 2, 2, device=device)
    weights = torch.rand(1, 3, 2, 1, 2, device=device)
    ops = torch.ops.detr_ext
    try:
        if name in ("cpu_check", "cuda_check"):  # weights with 1 point, locations with 2
            ops.ms_deform_attn(value, shapes, starts, locations, weights[..., :1])
        elif name == "cuda_backward_check":  # grad_output of the wrong width
            grad_output = torch.randn(1, 3, 7, device=device)
            ops.ms_deform_attn_backward(grad_output, value, shapes, starts, locations, weights)
        elif name == "cuda_forward_lean":
            os.environ[LEAN_ENV] = "3"
            ops.ms_deform_attn(value, shapes, starts, locations, weights)
        else:
            os.environ[TILE_ENV] = "0"
            ops.ms_deform_attn(value, shapes, starts, locations, weights)
    except RuntimeError as error:
        return str(error).splitlines()[0]
    raise SystemExit(f"{name}: no error raised")
