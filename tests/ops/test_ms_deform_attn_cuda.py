"""The CUDA kernels against the reference path (float64 oracle). Needs a GPU."""

from __future__ import annotations

import pytest
import torch

from detr_ext.ops import build_info, ms_deform_attn
from tests.ops.msda_cases import (
    CASES,
    NON_FINITE_INPUTS,
    Case,
    check_non_finite_parity,
    forward_and_grads,
    make_inputs,
    max_relative_error,
    non_finite_inputs,
)

pytestmark = pytest.mark.cuda

# Relative error bound against the float64 reference for output and each gradient.
TOLERANCE = {
    torch.float64: 1e-10,
    torch.float32: 1e-4,
    torch.float16: 1e-2,
    torch.bfloat16: 4e-2,
}
ENCODER = Case(1, 22223, 8, 32, ((100, 167), (50, 84), (25, 42), (13, 21)), 4, "mixed")


def _check(case: Case, dtype: torch.dtype):
    reference = forward_and_grads(make_inputs(case, torch.float64), "pytorch")
    coord_dtype = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    inputs = make_inputs(case, dtype, device="cuda", coord_dtype=coord_dtype)
    actual = forward_and_grads(inputs, "compiled", grad_output=reference[-1].cuda())
    assert actual[0].dtype == dtype
    for name, got, want in zip(
        ("output", "grad_value", "grad_locations", "grad_weights"), actual[:4], reference[:4]
    ):
        error = max_relative_error(got.cpu(), want)
        # Location gradients of reduced-precision values inherit the value rounding twice.
        bound = TOLERANCE[dtype] * (2 if name == "grad_locations" else 1)
        assert error < bound, f"{name}: relative error {error:.2e} >= {bound:.0e}"


def test_cuda_kernels_registered():
    assert "cuda" in build_info()["kernels"]
    assert torch._C._dispatch_has_kernel_for_dispatch_key("detr_ext::ms_deform_attn", "CUDA")


@pytest.mark.parametrize("dtype", list(TOLERANCE), ids=str)
@pytest.mark.parametrize("case", CASES, ids=str)
def test_cuda_parity(case, dtype):
    _check(case, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_cuda_encoder_sized_case(dtype):
    _check(ENCODER, dtype)


def test_cuda_gradcheck_float64():
    case = Case(2, 3, 2, 5, ((3, 4), (2, 2), (1, 1)), 2, "mixed")
    value, shapes, starts, locations, weights = make_inputs(case, device="cuda", seed=3)
    locations = (locations * 0.9 + 0.031).requires_grad_(True)
    value.requires_grad_(True)
    weights.requires_grad_(True)

    def op(value, locations, weights):
        return ms_deform_attn(value, shapes, starts, locations, weights, backend="compiled")

    assert torch.autograd.gradcheck(op, (value, locations, weights), eps=1e-6, atol=1e-7)


def test_cuda_autocast_runs_in_autocast_dtype():
    value, shapes, starts, locations, weights = make_inputs(CASES[3], torch.float32, device="cuda")
    with torch.autocast("cuda", dtype=torch.float16):
        out = ms_deform_attn(value, shapes, starts, locations, weights)
    assert out.dtype == torch.float16
    expected = ms_deform_attn(value, shapes, starts, locations, weights)
    assert max_relative_error(out, expected) < 1e-2


@pytest.mark.parametrize("backend", ["compiled", "pytorch"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("name", list(NON_FINITE_INPUTS))
def test_cuda_non_finite_parity(name, dtype, backend):
    # The CPU float64 PyTorch path is the oracle; on CUDA both the kernels and the PyTorch path
    # (whose grid_sample alone would sample zeros at +-inf) must follow the same rule.
    if backend == "pytorch" and dtype == torch.bfloat16:
        pytest.skip("the PyTorch path casts locations to bfloat16: different sampling points")
    reference = forward_and_grads(non_finite_inputs(name, torch.float64), "pytorch")
    coord_dtype = torch.float32 if dtype == torch.bfloat16 else dtype
    inputs = non_finite_inputs(name, dtype, device="cuda", coord_dtype=coord_dtype)
    actual = forward_and_grads(inputs, backend, grad_output=reference[-1].cuda())
    check_non_finite_parity(name, actual, reference, TOLERANCE[dtype] * 2)
