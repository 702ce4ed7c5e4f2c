"""Sigmoid focal loss (Lin et al., 2017) with DETR-style normalization."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from .precision import autocast_disabled, full_precision

__all__ = ["sigmoid_focal_loss"]


def sigmoid_focal_loss(
    inputs: Tensor,
    targets: Tensor,
    num_boxes: float,
    alpha: float = 0.25,
    gamma: float = 2.0,
) -> Tensor:
    """Focal loss on independent per-class sigmoids, as in Deformable DETR and detrex.

    The element-wise loss is ``alpha_t * (1 - p_t) ** gamma * BCE(inputs, targets)``; it is
    averaged over the query dimension (dim 1), summed over everything else and divided by
    ``num_boxes``. DETR criteria multiply the result by ``Q`` to undo the query mean.
    float16 / bfloat16 inputs are computed in float32 (with autocast off), so the loss is
    float32 and its gradient flows back to ``inputs`` in their own dtype.

    Args:
        inputs: ``[B, Q, K]`` logits.
        targets: ``[B, Q, K]`` binary (or soft) targets.
        num_boxes: normalizer, the (average per worker) number of ground-truth boxes.
        alpha: weight of positives, ``1 - alpha`` weights negatives; a negative value
            disables the weighting.
        gamma: focusing exponent.

    Returns:
        Scalar loss.
    """
    if inputs.shape != targets.shape:
        raise ValueError(
            "sigmoid_focal_loss: expected inputs and targets of the same shape, "
            f"got {tuple(inputs.shape)} and {tuple(targets.shape)}"
        )
    if inputs.dim() < 2:
        raise ValueError(
            f"sigmoid_focal_loss: expected inputs of shape [B, Q, ...], got {tuple(inputs.shape)}"
        )
    inputs = full_precision(inputs)
    targets = full_precision(targets).to(inputs.dtype)
    with autocast_disabled(inputs.device):
        prob = inputs.sigmoid()
        bce = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
        prob_of_truth = prob * targets + (1 - prob) * (1 - targets)
        loss = bce * ((1 - prob_of_truth) ** gamma)
        if alpha >= 0:
            loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
        return loss.mean(1).sum() / num_boxes
