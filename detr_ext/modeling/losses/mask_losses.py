"""Mask losses on sampled points (Mask2Former / PointRend style) with DETR's normalization.

Instead of comparing full-resolution masks (memory growing with the image area), the
predicted and target masks are both read at ``P`` points per mask (bilinear interpolation at
normalized coordinates), so their resolutions need not match and the cost is ``O(P)`` per
mask. The points are mostly the ones where the prediction is least certain (logit near 0),
plus some uniformly random ones (:func:`sample_points_by_uncertainty`).

The losses on the sampled values are DETR's: the dice loss and the sigmoid focal loss, each
summed over masks and divided by ``num_masks`` (the criterion's ``num_boxes``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .focal_loss import sigmoid_focal_loss

__all__ = ["dice_loss", "point_sample", "sample_points_by_uncertainty", "sigmoid_focal_mask_loss"]


def point_sample(
    inputs: Tensor,
    coords: Tensor,
    align_corners: bool = False,
    padding_mode: str = "border",
) -> Tensor:
    """Bilinear values of ``inputs`` at normalized points.

    Args:
        inputs: ``[N, C, H, W]`` maps.
        coords: ``[N, P, 2]`` points ``(x, y)`` in ``[0, 1]``; with ``align_corners=False``
            ``(0, 0)`` is the top-left corner of the top-left pixel (pixel ``(i, j)`` has its
            center at ``((j + 0.5) / W, (i + 0.5) / H)``), so maps of different resolutions
            covering the same frame are sampled at the same places.
        align_corners: as in :func:`torch.nn.functional.grid_sample`.
        padding_mode: as in :func:`~torch.nn.functional.grid_sample`. The default ``"border"``
            gives points within half a pixel of the edge the edge pixels' values
            (Mask2Former's default ``"zeros"`` would blend them with 0).

    Returns:
        ``[N, C, P]`` sampled values, in ``inputs``' dtype.
    """
    if inputs.dim() != 4:
        raise ValueError(f"point_sample: expected inputs [N, C, H, W], got {tuple(inputs.shape)}")
    if coords.dim() != 3 or coords.shape[0] != inputs.shape[0] or coords.shape[-1] != 2:
        raise ValueError(
            f"point_sample: expected coords [N={inputs.shape[0]}, P, 2], got {tuple(coords.shape)}"
        )
    grid = (2.0 * coords.to(inputs.dtype) - 1.0)[:, :, None]  # [N, P, 1, 2] in [-1, 1]
    sampled = F.grid_sample(
        inputs, grid, mode="bilinear", padding_mode=padding_mode, align_corners=align_corners
    )
    return sampled[..., 0]


def sample_points_by_uncertainty(
    logits: Tensor,
    num_points: int,
    oversample_ratio: float = 3.0,
    importance_sample_ratio: float = 0.75,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Points where the mask prediction is most uncertain, plus uniformly random ones.

    ``int(num_points * oversample_ratio)`` uniform points are drawn and the
    ``int(importance_sample_ratio * num_points)`` with the highest uncertainty ``-|logit|``
    (bilinear value at the point) are kept; the rest of the ``num_points`` are uniform. With
    ``importance_sample_ratio=0`` the result is exactly ``torch.rand(N, num_points, 2,
    generator=generator)`` (nothing is oversampled). No gradient flows through the choice.

    Args:
        logits: ``[N, 1, H, W]`` mask logits.
        num_points: points per mask ``P``.
        oversample_ratio: candidates per kept uncertain point, ``>= 1``.
        importance_sample_ratio: share of the points chosen by uncertainty, in ``[0, 1]``.
        generator: random generator on ``logits``' device, or None for the global one.

    Returns:
        ``[N, P, 2]`` points ``(x, y)`` in ``[0, 1]``, in ``logits``' dtype.
    """
    if logits.dim() != 4 or logits.shape[1] != 1:
        raise ValueError(
            f"sample_points_by_uncertainty: expected logits [N, 1, H, W], got {tuple(logits.shape)}"
        )
    if num_points < 1:
        raise ValueError(
            f"sample_points_by_uncertainty: expected num_points >= 1, got {num_points}"
        )
    if oversample_ratio < 1:
        raise ValueError(
            f"sample_points_by_uncertainty: expected oversample_ratio >= 1, got {oversample_ratio}"
        )
    if not 0 <= importance_sample_ratio <= 1:
        raise ValueError(
            "sample_points_by_uncertainty: expected importance_sample_ratio in [0, 1], got "
            f"{importance_sample_ratio}"
        )
    num_masks = logits.shape[0]
    options = {"dtype": logits.dtype, "device": logits.device, "generator": generator}
    num_uncertain = int(importance_sample_ratio * num_points)
    if num_uncertain == 0:
        return torch.rand(num_masks, num_points, 2, **options)

    with torch.no_grad():
        num_candidates = max(int(num_points * oversample_ratio), num_uncertain)
        candidates = torch.rand(num_masks, num_candidates, 2, **options)
        uncertainty = -point_sample(logits.detach(), candidates)[:, 0].abs()  # [N, candidates]
        top = uncertainty.topk(num_uncertain, dim=1).indices  # [N, num_uncertain]
        points = candidates.gather(1, top[..., None].expand(-1, -1, 2))
        num_random = num_points - num_uncertain
        if num_random > 0:
            points = torch.cat([points, torch.rand(num_masks, num_random, 2, **options)], dim=1)
    return points


def _check_point_losses(inputs: Tensor, targets: Tensor, num_masks: float, where: str) -> None:
    if inputs.dim() != 2 or inputs.shape != targets.shape:
        raise ValueError(
            f"{where}: expected inputs and targets of the same shape [N, P], got "
            f"{tuple(inputs.shape)} and {tuple(targets.shape)}"
        )
    if inputs.shape[1] == 0:
        raise ValueError(
            f"{where}: expected at least one point per mask, got {tuple(inputs.shape)}"
        )
    if not num_masks > 0:
        raise ValueError(f"{where}: expected num_masks > 0, got {num_masks}")


def dice_loss(inputs: Tensor, targets: Tensor, num_masks: float) -> Tensor:
    """DETR's dice loss over sampled points, summed over masks, divided by ``num_masks``.

    Per mask: ``1 - (2 * sum(sigmoid(x) * t) + 1) / (sum(sigmoid(x)) + sum(t) + 1)``.

    Args:
        inputs: ``[N, P]`` mask logits.
        targets: ``[N, P]`` targets in ``[0, 1]``.
        num_masks: normalizer (the number of target masks, averaged over workers).

    Returns:
        Scalar loss (0 for ``N = 0``).
    """
    _check_point_losses(inputs, targets, num_masks, "dice_loss")
    probabilities = inputs.sigmoid()
    targets = targets.to(probabilities.dtype)
    numerator = 2 * (probabilities * targets).sum(-1)
    denominator = probabilities.sum(-1) + targets.sum(-1)
    loss = 1 - (numerator + 1) / (denominator + 1)
    return loss.sum() / num_masks


def sigmoid_focal_mask_loss(
    inputs: Tensor,
    targets: Tensor,
    num_masks: float,
    alpha: float = 0.25,
    gamma: float = 2.0,
) -> Tensor:
    """DETR's sigmoid focal mask loss: per point focal loss, mean over the points of each
    mask, summed over masks, divided by ``num_masks``.

    Args:
        inputs: ``[N, P]`` mask logits.
        targets: ``[N, P]`` targets in ``[0, 1]``.
        num_masks: normalizer (the number of target masks, averaged over workers).
        alpha: weight of positives (``1 - alpha`` for negatives); negative disables it.
        gamma: focusing exponent.

    Returns:
        Scalar float32 (or float64) loss (0 for ``N = 0``).
    """
    _check_point_losses(inputs, targets, num_masks, "sigmoid_focal_mask_loss")
    # sigmoid_focal_loss averages over dim 1 (here the points) and sums the rest.
    return sigmoid_focal_loss(inputs, targets, num_masks, alpha=alpha, gamma=gamma)
