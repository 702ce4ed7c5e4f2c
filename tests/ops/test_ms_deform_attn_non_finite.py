"""Non-finite sampling locations and attention weights: the compiled CPU op and the PyTorch path
follow one rule (ms_deform_attn's docstring), forward and backward."""

from __future__ import annotations

import pytest
import torch

from detr_ext.ops import build_info
from tests.ops.msda_cases import (
    NON_FINITE_INPUTS,
    check_non_finite_parity,
    forward_and_grads,
    non_finite_inputs,
)

pytestmark = pytest.mark.skipif(
    "cpu" not in build_info()["kernels"], reason="compiled CPU kernel not built"
)


@pytest.mark.parametrize("name", list(NON_FINITE_INPUTS))
def test_non_finite_parity_float64(name):
    inputs = non_finite_inputs(name, torch.float64)
    expected = forward_and_grads(inputs, "pytorch")
    actual = forward_and_grads(inputs, "compiled", grad_output=expected[-1])
    check_non_finite_parity(name, actual, expected, tolerance=1e-12)


@pytest.mark.parametrize("name", ["x=nan", "y=-inf", "weight=+inf", "weight=+inf,half-outside"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_non_finite_parity_reduced_precision(name, dtype):
    # bfloat16 values with float32 locations/weights: the layout of CPU bf16 autocast.
    reference = forward_and_grads(non_finite_inputs(name, torch.float64), "pytorch")
    inputs = non_finite_inputs(name, dtype, coord_dtype=torch.float32)
    actual = forward_and_grads(inputs, "compiled", grad_output=reference[-1])
    check_non_finite_parity(name, actual, reference, 1e-4 if dtype == torch.float32 else 3e-2)
