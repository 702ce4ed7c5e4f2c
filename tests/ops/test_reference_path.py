"""The pure-PyTorch path (the fallback without the extension, ``backend="pytorch"``, the test
oracle) in float16 / bfloat16."""

from __future__ import annotations

import pytest
import torch

from detr_ext.ops import ms_deform_attn
from tests.ops.msda_cases import Case, forward_and_grads, make_inputs, max_relative_error

# Maps of 32 x 40 and more: CPU grid_sample in float16 / bfloat16 on the strided per-level
# views returned NaN and ~1e37 values there (a 3 x 3 map did not show it), and bfloat16
# locations are off by up to half a pixel.
CASE = Case(2, 300, 8, 32, ((32, 40), (16, 20)), 4, "inside")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_reduced_precision_values_are_sampled_in_float32(dtype):
    inputs64 = make_inputs(CASE, torch.float64)
    expected = forward_and_grads(inputs64, "pytorch")
    inputs = list(make_inputs(CASE, torch.float32))
    inputs[0] = inputs[0].to(dtype)  # reduced values, float32 locations (the module's layout)
    actual = forward_and_grads(inputs, "pytorch", grad_output=expected[-1])
    assert actual[0].dtype == dtype and actual[1].dtype == dtype
    assert all(tensor.isfinite().all() for tensor in actual[:4])
    # The float32 sampling leaves the rounding of value and output: < 1e-2 relative for
    # bfloat16 (8 bits), < 1e-3 for float16; the broken path was off by 1e37 or NaN.
    tolerance = 1e-2 if dtype == torch.bfloat16 else 1e-3
    for name, got, want in zip(("output", "grad_value"), actual[:2], expected[:2]):
        error = max_relative_error(got, want)
        assert error < tolerance, f"{name}: relative error {error:.2e}"

    # Locations and weights in the reduced dtype too: still sampled in float32, finite.
    inputs[3], inputs[4] = inputs[3].to(dtype), inputs[4].to(dtype)
    output = ms_deform_attn(*inputs, backend="pytorch")
    assert output.dtype == dtype and output.isfinite().all()
