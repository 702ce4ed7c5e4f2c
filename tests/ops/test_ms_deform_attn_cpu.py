"""The compiled CPU operator against the grid_sample reference path."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from detr_ext.ops import build_info, ms_deform_attn, ms_deform_attn_pytorch, resolve_backend
from tests.ops.msda_cases import (
    CASES,
    Case,
    forward_and_grads,
    make_inputs,
    max_relative_error,
)

pytestmark = pytest.mark.skipif(
    "cpu" not in build_info()["kernels"], reason="compiled CPU kernel not built"
)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_float64_parity(case: Case):
    inputs = make_inputs(case, torch.float64)
    expected = forward_and_grads(inputs, "pytorch")
    actual = forward_and_grads(inputs, "compiled", grad_output=expected[-1])
    for name, got, want in zip(
        ("output", "grad_value", "grad_locations", "grad_weights"), actual[:4], expected[:4]
    ):
        assert got.shape == want.shape, name
        assert got.dtype == want.dtype, name
        error = (got - want).abs().max().item() if want.numel() else 0.0
        assert error < 1e-10, f"{name}: max abs error {error:.3e}"


@pytest.mark.parametrize("case", CASES, ids=str)
def test_float32_parity(case: Case):
    reference = forward_and_grads(make_inputs(case, torch.float64), "pytorch")
    actual = forward_and_grads(
        make_inputs(case, torch.float32), "compiled", grad_output=reference[-1]
    )
    for name, got, want in zip(
        ("output", "grad_value", "grad_locations", "grad_weights"), actual[:4], reference[:4]
    ):
        assert got.dtype == torch.float32, name
        assert max_relative_error(got, want) < 1e-4, name


@pytest.mark.parametrize("case", CASES[:7], ids=str)
def test_bfloat16_matches_float32(case: Case):
    inputs32 = make_inputs(case, torch.float32)
    # bf16 value with float32 locations: the layout the module produces under CPU autocast.
    inputs16 = list(inputs32)
    inputs16[0] = inputs32[0].bfloat16()
    expected = forward_and_grads(inputs32, "compiled")
    actual = forward_and_grads(inputs16, "compiled", grad_output=expected[-1])
    assert actual[0].dtype == torch.bfloat16
    for name, got, want in zip(("output", "grad_value"), actual[:2], expected[:2]):
        assert max_relative_error(got, want) < 3e-2, name
    # Same with bf16 locations and weights too.
    inputs16[3], inputs16[4] = inputs32[3].bfloat16(), inputs32[4].bfloat16()
    actual = forward_and_grads(inputs16, "compiled", grad_output=expected[-1])
    assert max_relative_error(actual[0], expected[0]) < 5e-2


def test_gradcheck_float64():
    case = Case(2, 3, 2, 3, ((3, 4), (2, 2), (1, 1)), 2, "mixed")
    value, shapes, starts, locations, weights = make_inputs(case, torch.float64, seed=3)
    # Keep locations off the pixel grid: the bilinear kink is not differentiable there.
    locations = (locations * 0.9 + 0.031).requires_grad_(True)
    value.requires_grad_(True)
    weights.requires_grad_(True)

    def op(value, locations, weights):
        return ms_deform_attn(value, shapes, starts, locations, weights, backend="compiled")

    assert torch.autograd.gradcheck(op, (value, locations, weights), eps=1e-6, atol=1e-7)


def test_non_contiguous_inputs():
    case = Case(2, 10, 4, 8, ((4, 6), (2, 3)), 3, "mixed")
    value, shapes, starts, locations, weights = make_inputs(case)
    expected = ms_deform_attn_pytorch(value, shapes, locations, weights)
    value_nc = value.transpose(2, 3).contiguous().transpose(2, 3)
    locations_nc = locations.permute(5, 0, 1, 2, 3, 4).contiguous().permute(1, 2, 3, 4, 5, 0)
    weights_nc = torch.stack([weights, weights], dim=-1)[..., 0]
    assert not (value_nc.is_contiguous() or locations_nc.is_contiguous())
    assert not weights_nc.is_contiguous()
    torch.testing.assert_close(weights_nc, weights)
    actual = ms_deform_attn(value_nc, shapes, starts, locations_nc, weights_nc, backend="compiled")
    assert (actual - expected).abs().max() < 1e-10


def test_int32_metadata_accepted():
    case = Case(1, 5, 2, 4, ((3, 3), (2, 2)), 2, "inside")
    value, shapes, starts, locations, weights = make_inputs(case)
    expected = ms_deform_attn(value, shapes, starts, locations, weights, backend="compiled")
    actual = ms_deform_attn(value, shapes.int(), starts.int(), locations, weights)
    torch.testing.assert_close(actual, expected)


def test_far_locations_sample_zero():
    # Finite but far outside (and beyond the int64 range in pixels): zeros, zero gradients.
    # Non-finite locations give NaN instead: test_ms_deform_attn_non_finite.py.
    case = Case(1, 4, 1, 5, ((3, 3),), 1, "inside")
    value, shapes, starts, locations, weights = make_inputs(case)
    locations[0, 0, 0, 0, 0] = torch.tensor([-1e300, 0.5], dtype=torch.float64)
    locations[0, 1, 0, 0, 0] = torch.tensor([1e300, 0.5], dtype=torch.float64)
    locations[0, 2, 0, 0, 0] = torch.tensor([0.5, -1e30])
    locations[0, 3, 0, 0, 0] = torch.tensor([1e30, 1e30])
    output, grad_value, grad_locations, grad_weights, _ = forward_and_grads(
        (value, shapes, starts, locations, weights), "compiled"
    )
    assert torch.equal(output, torch.zeros_like(output))
    assert torch.equal(grad_value, torch.zeros_like(grad_value))
    assert torch.equal(grad_locations, torch.zeros_like(grad_locations))
    assert torch.equal(grad_weights, torch.zeros_like(grad_weights))


def test_direct_op_call_rejects_no_levels():
    # The C++ checks guard torch.ops calls that bypass the Python validation.
    args = (
        torch.zeros(1, 0, 2, 4),
        torch.zeros(0, 2, dtype=torch.long),
        torch.zeros(0, dtype=torch.long),
        torch.rand(1, 3, 2, 0, 2, 2),
        torch.rand(1, 3, 2, 0, 2),
    )
    with pytest.raises(RuntimeError, match="expected at least one level"):
        torch.ops.detr_ext.ms_deform_attn(*args)
    with pytest.raises(RuntimeError, match="expected at least one level"):
        torch.ops.detr_ext.ms_deform_attn_backward(torch.zeros(1, 3, 8), *args)


def test_compile_fullgraph_forward_and_backward():
    case = Case(2, 16, 4, 8, ((6, 8), (3, 4), (1, 1)), 4, "mixed")
    value, shapes, starts, locations, weights = make_inputs(case, torch.float32)

    def attend(value, locations, weights):
        return (ms_deform_attn(value, shapes, starts, locations, weights) * 2.0).relu()

    compiled = torch.compile(attend, fullgraph=True, backend="aot_eager")
    leaves = [t.clone().requires_grad_(True) for t in (value, locations, weights)]
    eager_leaves = [t.clone().requires_grad_(True) for t in (value, locations, weights)]
    out = compiled(*leaves)
    out_eager = attend(*eager_leaves)
    torch.testing.assert_close(out, out_eager)
    out.square().sum().backward()
    out_eager.square().sum().backward()
    for leaf, eager_leaf in zip(leaves, eager_leaves):
        torch.testing.assert_close(leaf.grad, eager_leaf.grad)


def test_compile_inductor_traces_op_without_graph_break():
    case = Case(1, 8, 2, 4, ((4, 4), (2, 2)), 2, "inside")
    value, shapes, starts, locations, weights = make_inputs(case, torch.float32)
    explanation = torch._dynamo.explain(
        lambda v, loc, w: ms_deform_attn(v, shapes, starts, loc, w)
    )(value, locations, weights)
    assert explanation.graph_break_count == 0
    assert explanation.graph_count == 1


def test_opcheck():
    case = Case(1, 6, 2, 3, ((3, 4), (1, 1)), 2, "mixed")
    value, shapes, starts, locations, weights = make_inputs(case, torch.float64)
    args = (value.requires_grad_(), shapes, starts, locations.requires_grad_(), weights)
    torch.library.opcheck(torch.ops.detr_ext.ms_deform_attn.default, args)


def test_cpu_autocast_runs_float32_unless_bf16_is_asked():
    case = Case(1, 5, 2, 4, ((3, 3), (2, 2)), 2, "inside")
    value, shapes, starts, locations, weights = make_inputs(case, torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        default = ms_deform_attn(value, shapes, starts, locations, weights)
        bf16 = ms_deform_attn(
            value, shapes, starts, locations, weights, cpu_autocast_dtype=torch.bfloat16
        )
    assert default.dtype == torch.float32
    assert bf16.dtype == torch.bfloat16
    torch.testing.assert_close(bf16.float(), default, atol=3e-2, rtol=3e-2)


def test_cpu_bf16_autocast_keeps_float32_locations_on_a_large_map():
    # On a 128x160 map a bfloat16 location (8 significant bits) is off by up to ~0.5 pixel, so
    # casting locations/weights to bf16 costs ~30% relative error; bf16 values alone ~0.3%.
    # (A 3x3 map cannot tell the two apart.)
    case = Case(1, 6, 2, 8, ((128, 160),), 4, "inside")
    value, shapes, starts, locations, weights = make_inputs(case, torch.float32, seed=7)
    expected = ms_deform_attn(value, shapes, starts, locations, weights, backend="compiled")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        actual = ms_deform_attn(
            value,
            shapes,
            starts,
            locations,
            weights,
            backend="compiled",
            cpu_autocast_dtype=torch.bfloat16,
        )
    assert actual.dtype == torch.bfloat16
    error = max_relative_error(actual, expected)
    assert error < 2e-2, f"relative error {error:.2e} against float32"


def test_backends_agree_and_env_variable(monkeypatch):
    case = Case(1, 5, 2, 4, ((3, 3), (2, 2)), 2, "mixed")
    inputs = make_inputs(case)
    compiled = ms_deform_attn(*inputs, backend="compiled")
    pytorch = ms_deform_attn(*inputs, backend="pytorch")
    assert (compiled - pytorch).abs().max() < 1e-12
    assert resolve_backend("auto", inputs[0]) == "compiled"
    monkeypatch.setenv("DETR_EXT_MSDA_BACKEND", "pytorch")
    assert resolve_backend(None, inputs[0]) == "pytorch"
    monkeypatch.setenv("DETR_EXT_MSDA_BACKEND", "fastest")
    with pytest.raises(ValueError, match="backend must be one of"):
        ms_deform_attn(*inputs)


_FALLBACK_SCRIPT = """
import warnings, torch
import detr_ext, detr_ext.layers
from detr_ext.ops import build_info, ms_deform_attn, ms_deform_attn_pytorch
info = build_info()
assert not info["extension_loaded"] and info["kernels"] == [], info
value = torch.randn(1, 20, 2, 4)
shapes = torch.tensor([[4, 4], [2, 2]])
starts = torch.tensor([0, 16])
locations = torch.rand(1, 3, 2, 2, 2, 2)
weights = torch.rand(1, 3, 2, 2, 2)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    out = ms_deform_attn(value, shapes, starts, locations, weights)
    out = ms_deform_attn(value, shapes, starts, locations, weights)
assert len([w for w in caught if "falls back to the PyTorch path" in str(w.message)]) == 1
assert torch.equal(out, ms_deform_attn_pytorch(value, shapes, locations, weights))
try:
    ms_deform_attn(value, shapes, starts, locations, weights, backend="compiled")
except RuntimeError as error:
    assert "unavailable" in str(error), error
else:
    raise AssertionError("backend='compiled' must raise without the extension")
module = detr_ext.layers.MultiScaleDeformableAttention(16, 2, 2, 2)
reference_points = torch.rand(1, 3, 2, 2)
assert module(torch.randn(1, 3, 16), value=torch.randn(1, 20, 16),
              reference_points=reference_points, spatial_shapes=shapes,
              level_start_index=starts).shape == (1, 3, 16)
print("fallback ok")
"""


def test_library_works_without_the_extension():
    env = dict(os.environ, DETR_EXT_DISABLE_EXTENSION="1")
    result = subprocess.run(
        [sys.executable, "-c", _FALLBACK_SCRIPT],
        env=env,
        cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "fallback ok" in result.stdout
