"""sigmoid_focal_loss: hand values and torchvision's element-wise focal loss."""

import math

import pytest
import torch
import torchvision.ops as tv_ops

from detr_ext.modeling.losses import sigmoid_focal_loss


def test_hand_computed_value():
    # One image, two queries, one class: query 0 is positive with logit 0, query 1 is a
    # negative with logit log(3) (p = 0.75).
    logits = torch.tensor([[[0.0], [math.log(3.0)]]], dtype=torch.float64)
    targets = torch.tensor([[[1.0], [0.0]]], dtype=torch.float64)
    positive = 0.25 * 0.5**2 * -math.log(0.5)
    negative = 0.75 * 0.75**2 * -math.log(0.25)
    # Mean over the 2 queries, sum over the rest, then / num_boxes.
    expected = (positive + negative) / 2 / 4.0
    loss = sigmoid_focal_loss(logits, targets, num_boxes=4.0)
    assert loss.item() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("alpha,gamma", [(0.25, 2.0), (-1.0, 1.5)])
def test_matches_torchvision_elementwise(alpha, gamma):
    logits = torch.randn(2, 5, 3, dtype=torch.float64)
    targets = (torch.rand(2, 5, 3) > 0.7).to(torch.float64)
    elementwise = tv_ops.sigmoid_focal_loss(logits, targets, alpha=alpha, gamma=gamma)
    expected = elementwise.mean(1).sum() / 3.0
    torch.testing.assert_close(sigmoid_focal_loss(logits, targets, 3.0, alpha, gamma), expected)


def test_shape_mismatch():
    with pytest.raises(ValueError, match="same shape"):
        sigmoid_focal_loss(torch.zeros(1, 2, 3), torch.zeros(1, 2, 4), 1.0)


def test_half_precision_inputs_are_computed_in_float32():
    """float16 logits (as under autocast), some saturated at +-20: the loss is the float32
    loss of the same values, and the gradient reaches the float16 logits."""
    generator = torch.Generator().manual_seed(0)
    logits = (torch.randn(2, 30, 4, generator=generator) * 4).half()
    logits[0, :5] = 20.0
    logits[1, :5] = -20.0
    targets = (torch.rand(2, 30, 4, generator=generator) > 0.8).half()
    logits.requires_grad_(True)
    loss = sigmoid_focal_loss(logits, targets, num_boxes=3.0)
    expected = sigmoid_focal_loss(logits.detach().float(), targets.float(), num_boxes=3.0)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=0)
    loss.backward()
    assert logits.grad.dtype == torch.float16 and torch.isfinite(logits.grad).all()
    assert logits.grad.abs().sum() > 0


# Found by `make mutate` (mutmut survivors).
def test_alpha_zero_weights_out_positives():
    """alpha = 0 is a valid weighting (positives weigh 0, negatives 1), not "no weighting"."""
    logits = torch.tensor([[[2.0, -1.0]]], dtype=torch.float64)
    targets = torch.tensor([[[1.0, 0.0]]], dtype=torch.float64)
    p = torch.sigmoid(torch.tensor(-1.0, dtype=torch.float64))
    negative_only = -(p**2) * torch.log(1 - p)  # the target-0 term, weight 1 - alpha = 1
    loss = sigmoid_focal_loss(logits, targets, num_boxes=1.0, alpha=0.0)
    assert loss.item() == pytest.approx(negative_only.item(), rel=1e-12)


def test_two_dim_inputs_and_integer_targets():
    """``[B, Q]`` inputs are allowed (one class) and 0/1 integer targets equal float ones."""
    logits = torch.randn(2, 5, dtype=torch.float64)
    targets = (torch.rand(2, 5) > 0.5).long()
    expected = tv_ops.sigmoid_focal_loss(logits, targets.double()).mean(1).sum() / 2.0
    torch.testing.assert_close(sigmoid_focal_loss(logits, targets, 2.0), expected)
    with pytest.raises(ValueError, match=r"sigmoid_focal_loss: expected inputs of shape \[B, Q"):
        sigmoid_focal_loss(torch.zeros(3), torch.zeros(3), 1.0)
    with pytest.raises(ValueError, match="^sigmoid_focal_loss: expected inputs and targets"):
        sigmoid_focal_loss(torch.zeros(1, 2, 3), torch.zeros(1, 2, 4), 1.0)
