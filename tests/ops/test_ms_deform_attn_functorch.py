"""``torch.func`` transforms of the operator: functorch refuses the compiled op's derivative
(a C++ autograd Function: "cannot use C++ torch::autograd::Function with functorch transforms";
registered from Python it raised "an autograd.Function ... must override the setup_context
staticmethod") and the op has no ``vmap`` batching rule, so inputs a transform tracks take the
PyTorch path, the same function. ``grad``, ``jacrev``, ``jvp`` and ``vmap`` then give what plain
autograd and a loop over the batch give with the compiled op."""

from __future__ import annotations

import pytest
import torch

from detr_ext.ops import build_info, ms_deform_attn
from tests.ops.msda_cases import CASES, make_inputs

pytestmark = pytest.mark.skipif(
    "cpu" not in build_info()["kernels"], reason="compiled CPU kernel not built"
)
CASE = CASES[0]


def _loss(value, shapes, starts, locations, weights):
    output = ms_deform_attn(value, shapes, starts, locations, weights, backend="compiled")
    return (output * torch.linspace(-1, 1, output.shape[-1], dtype=output.dtype)).sum()


def test_grad_equals_autograd_of_the_compiled_op():
    value, shapes, starts, locations, weights = make_inputs(CASE)
    leaves = [t.detach().requires_grad_() for t in (value, locations, weights)]
    _loss(leaves[0], shapes, starts, leaves[1], leaves[2]).backward()
    grads = torch.func.grad(lambda v, loc, w: _loss(v, shapes, starts, loc, w), argnums=(0, 1, 2))(
        value, locations, weights
    )
    for got, leaf in zip(grads, leaves, strict=True):
        torch.testing.assert_close(got, leaf.grad, rtol=1e-10, atol=1e-12)


def test_jacrev_jvp_and_vmap():
    value, shapes, starts, locations, weights = make_inputs(CASE)
    op = lambda v, loc, w: ms_deform_attn(v, shapes, starts, loc, w, backend="compiled")  # noqa: E731
    # jacrev of the output with respect to the weights: the output is linear in them.
    jacobian = torch.func.jacrev(op, argnums=2)(value, locations, weights)
    direction = torch.randn_like(weights)
    expected = op(value, locations, direction)
    linear = jacobian.reshape(expected.numel(), weights.numel()) @ direction.flatten()
    torch.testing.assert_close(linear.view_as(expected), expected)
    # jvp (forward mode) in the direction of the weights: the output at that direction.
    _, tangent = torch.func.jvp(lambda w: op(value, locations, w), (weights,), (direction,))
    torch.testing.assert_close(tangent, expected)
    # vmap over the batch equals the batch itself.
    batched = torch.func.vmap(lambda v, loc, w: op(v[None], loc[None], w[None])[0])(
        value, locations, weights
    )
    torch.testing.assert_close(batched, op(value, locations, weights))


def test_constants_inside_a_transform_keep_the_compiled_op(monkeypatch):
    """Inputs a transform does not track are constants there: the compiled op runs."""
    value, shapes, starts, locations, weights = make_inputs(CASE)
    expected = _loss(value, shapes, starts, locations, weights)
    calls = []
    original = torch.ops.detr_ext.ms_deform_attn
    monkeypatch.setattr(
        torch.ops.detr_ext, "ms_deform_attn", lambda *a: calls.append(1) or original(*a)
    )
    scale = torch.tensor(2.0, dtype=value.dtype)
    grad = torch.func.grad(lambda s: s * _loss(value, shapes, starts, locations, weights))(scale)
    assert calls == [1]
    torch.testing.assert_close(grad, expected)
    torch.func.grad(lambda w: _loss(value, shapes, starts, locations, w))(weights)
    assert calls == [1]  # tracked weights: the PyTorch path
    # A constant that needs a gradient of plain autograd outside the transform: functorch
    # refuses the op's C++ autograd Function, so the PyTorch path again.
    outer = value.clone().requires_grad_()
    grad = torch.func.grad(lambda s: s * _loss(outer, shapes, starts, locations, weights))(scale)
    assert calls == [1]
    torch.testing.assert_close(grad, expected)
