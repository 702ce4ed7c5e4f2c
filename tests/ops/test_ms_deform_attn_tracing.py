"""The compiled operator beyond plain forward/backward: double backward, the fake kernel's
strides, the level table checked by the kernel itself (torch.compile / torch.export skip the
Python checks), meta and fake tensors (shape inference)."""

from __future__ import annotations

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from detr_ext.ops import build_info, ms_deform_attn
from tests.ops.msda_cases import Case, make_inputs

pytestmark = pytest.mark.skipif(
    "cpu" not in build_info()["kernels"], reason="compiled CPU kernel not built"
)

CASE = Case(2, 4, 2, 3, ((3, 5), (2, 2), (1, 1)), 3, "mixed")


def test_double_backward_matches_the_pytorch_path_and_passes_gradgradcheck():
    """The backward kernel has no derivative: second-order gradients were silently zero (only
    PyTorch's "autograd kernel was not registered" warning said so)."""
    value, shapes, starts, locations, weights = make_inputs(CASE, torch.float64)

    def penalty(backend):
        leaves = [t.clone().requires_grad_() for t in (value, locations, weights)]
        output = ms_deform_attn(leaves[0], shapes, starts, *leaves[1:], backend=backend)
        grads = torch.autograd.grad(output.square().sum(), leaves, create_graph=True)
        second = torch.autograd.grad(sum(g.square().sum() for g in grads), leaves)
        return grads, second

    first_compiled, second_compiled = penalty("compiled")
    first_pytorch, second_pytorch = penalty("pytorch")
    for got, want in zip((*first_compiled, *second_compiled), (*first_pytorch, *second_pytorch)):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    assert all(grad.abs().sum() > 0 for grad in second_compiled)

    def attend(value, locations, weights):
        return ms_deform_attn(value, shapes, starts, locations, weights, backend="compiled")

    # Locations strictly inside the map: the bilinear kinks (pixel centres) are where the
    # numerical Jacobian of a piecewise-linear function is not the analytical one.
    inside = make_inputs(Case(1, 3, 2, 2, ((3, 4), (1, 2)), 2, "inside"), torch.float64, seed=3)
    leaves = [inside[i].clone().requires_grad_() for i in (0, 3, 4)]
    shapes, starts = inside[1], inside[2]
    assert torch.autograd.gradgradcheck(attend, leaves)


def test_first_order_gradients_do_not_build_a_graph():
    value, shapes, starts, locations, weights = make_inputs(CASE, torch.float32)
    leaves = [t.clone().requires_grad_() for t in (value, locations, weights)]
    output = ms_deform_attn(leaves[0], shapes, starts, *leaves[1:], backend="compiled")
    grads = torch.autograd.grad(output.sum(), leaves)
    assert not any(grad.requires_grad for grad in grads)


def test_backward_fake_kernel_returns_the_kernels_contiguous_strides():
    """The fake backward kept the inputs' strides while the kernels return contiguous
    gradients: torch.compile (inductor) then failed in backward for a transposed value."""
    value, shapes, starts, locations, weights = make_inputs(CASE, torch.float32)
    value_t = value.transpose(2, 3).contiguous().transpose(2, 3)  # same shape, other strides
    locations_t = locations.transpose(0, 1).contiguous().transpose(0, 1)
    assert not value_t.is_contiguous() and not locations_t.is_contiguous()
    grad_output = torch.randn(CASE.batch, CASE.queries, CASE.heads * CASE.channels)
    args = (grad_output, value_t, shapes, starts, locations_t, weights)
    torch.library.opcheck(torch.ops.detr_ext.ms_deform_attn_backward.default, args)


@pytest.mark.parametrize(
    "spatial_shapes, level_start_index, message",
    [
        ([[3, 5], [2, 2], [1, 1]], [0, 14, 19], "level 1 starts at 14, expected 15"),
        ([[3, 5], [2, 3], [1, 1]], [0, 15, 21], "cover 22 positions but value has N=20"),
        ([[3, 5], [0, 2], [1, 1]], [0, 15, 15], "must be positive, got level 1 of 0 x 2"),
    ],
)
def test_kernel_checks_the_level_table(spatial_shapes, level_start_index, message):
    """torch.compile and torch.export run the op without the front's value checks (the
    tensors have no values while tracing): the CPU kernel refuses a wrong table itself instead
    of reading rows of another level or past the end of value."""
    value, _, _, locations, weights = make_inputs(CASE, torch.float32)
    shapes = torch.tensor(spatial_shapes)
    starts = torch.tensor(level_start_index)
    grad_output = torch.zeros(CASE.batch, CASE.queries, CASE.heads * CASE.channels)
    with pytest.raises(RuntimeError, match=message):
        torch.ops.detr_ext.ms_deform_attn(value, shapes, starts, locations, weights)
    with pytest.raises(RuntimeError, match=message):
        torch.ops.detr_ext.ms_deform_attn_backward(
            grad_output, value, shapes, starts, locations, weights
        )

    def attend(value, shapes, starts, locations, weights):
        return ms_deform_attn(value, shapes, starts, locations, weights)

    compiled = torch.compile(attend, fullgraph=True, backend="aot_eager")
    with pytest.raises(RuntimeError, match=message):
        compiled(value, shapes, starts, locations, weights)


@pytest.mark.parametrize("mode", ["meta", "fake"])
def test_shape_inference_on_meta_and_fake_tensors(mode):
    """Meta tensors fell back to the PyTorch path, which reads the level sizes (no data); fake
    tensors outside torch.compile failed in the front's value checks."""
    inputs = make_inputs(CASE, torch.float32)
    if mode == "meta":
        output = ms_deform_attn(*(t.to("meta") for t in inputs))
        assert output.is_meta
    else:
        with FakeTensorMode() as fake_mode:
            output = ms_deform_attn(*(fake_mode.from_tensor(t) for t in inputs))
    assert output.shape == (CASE.batch, CASE.queries, CASE.heads * CASE.channels)
    assert output.dtype == torch.float32
