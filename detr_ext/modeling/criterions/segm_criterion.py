"""DETR's segmentation loss ("DETRsegm"): the set criterion plus mask losses on the matched
queries.

The loss name ``"masks"`` adds, for the layer that predicts masks (the last decoder layer):

- ``loss_mask``: sigmoid focal loss of the matched queries' mask logits against their target
  masks, averaged over the points of each mask, summed, divided by ``num_boxes`` (DETR's);
- ``loss_dice``: dice loss of the same pairs, summed, divided by ``num_boxes``.

Both are computed on ``num_points`` points per mask (:mod:`detr_ext.modeling.losses.mask_losses`,
Mask2Former-style importance sampling) instead of DETR's full-resolution masks, so their memory
does not grow with the image area, and the predicted masks (at about a quarter of the padded
image size) and the targets (at the padded image size) are compared at the same normalized
coordinates whatever their resolutions.

The matched pairs are the ones of the class / box losses of the same layer and ``num_boxes`` is
the base criterion's (one ``all_reduce`` per forward, none added here). Auxiliary layers and
encoder proposals predict no masks; they get the class / box losses only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import ClassVar

import torch
from torch import Tensor

from detr_ext.modeling.losses.mask_losses import (
    dice_loss,
    point_sample,
    sample_points_by_uncertainty,
    sigmoid_focal_mask_loss,
)
from detr_ext.modeling.losses.precision import full_precision

from .base_criterion import Indices, SetCriterion

__all__ = ["SegmCriterion"]


class SegmCriterion(SetCriterion):
    """:class:`~detr_ext.modeling.SetCriterion` with DETR's mask losses (``"masks"``).

    Args:
        num_classes, matcher, weight_dict, losses, loss_class_type, eos_coef, alpha, gamma:
            as for :class:`~detr_ext.modeling.SetCriterion`; with ``"masks"`` in ``losses``,
            ``weight_dict`` needs ``loss_mask`` and ``loss_dice`` (DETR: 1 and 1).
        num_points: points sampled per mask (Mask2Former: 112 * 112 = 12544).
        oversample_ratio: uniform candidates per uncertain point, ``>= 1``.
        importance_sample_ratio: share of the points chosen where the prediction is least
            certain, in ``[0, 1]``; the rest are uniform.
        mask_alpha: focal balance of ``loss_mask`` (DETR: 0.25).
        mask_gamma: focal exponent of ``loss_mask`` (DETR: 2).

    Inputs of :meth:`forward`: those of ``SetCriterion`` plus, with ``"masks"``,

    - ``outputs["pred_masks"]``: ``[B, Q, h, w]`` mask logits of the last layer over the padded
      batch frame (``aux_outputs`` / ``enc_outputs`` entries have none);
    - ``targets[i]["masks"]``: ``[n_i, H, W]`` bool or float masks in the same padded frame
      (``H, W`` the padded batch image size; need not be a multiple of ``h, w``).

    Predictions of any float dtype are handled in float32 (see ``SetCriterion``).
    """

    LOSS_KEYS: ClassVar[dict[str, tuple[str, ...]]] = {
        **SetCriterion.LOSS_KEYS,
        "masks": ("loss_mask", "loss_dice"),
    }

    def __init__(
        self,
        num_classes: int,
        matcher: Callable[..., Indices],
        weight_dict: Mapping[str, float],
        losses: Iterable[str] = ("class", "boxes", "masks"),
        loss_class_type: str = "focal_loss",
        eos_coef: float = 0.1,
        alpha: float = 0.25,
        gamma: float = 2.0,
        num_points: int = 12544,
        oversample_ratio: float = 3.0,
        importance_sample_ratio: float = 0.75,
        mask_alpha: float = 0.25,
        mask_gamma: float = 2.0,
    ) -> None:
        super().__init__(
            num_classes,
            matcher,
            weight_dict,
            losses=losses,
            loss_class_type=loss_class_type,
            eos_coef=eos_coef,
            alpha=alpha,
            gamma=gamma,
        )
        name = type(self).__name__
        if num_points < 1:
            raise ValueError(f"{name}: expected num_points >= 1, got {num_points}")
        if oversample_ratio < 1:
            raise ValueError(f"{name}: expected oversample_ratio >= 1, got {oversample_ratio}")
        if not 0 <= importance_sample_ratio <= 1:
            raise ValueError(
                f"{name}: expected importance_sample_ratio in [0, 1], got {importance_sample_ratio}"
            )
        self.num_points = int(num_points)
        self.oversample_ratio = float(oversample_ratio)
        self.importance_sample_ratio = float(importance_sample_ratio)
        self.mask_alpha = mask_alpha
        self.mask_gamma = mask_gamma

    def compute_losses(
        self, outputs: Mapping[str, object], targets: Sequence[Mapping[str, Tensor]]
    ) -> dict[str, Tensor]:
        """The base losses, after checking the mask inputs when ``"masks"`` is requested."""
        if "masks" in self.losses:
            self.check_mask_inputs(outputs, targets)
        return super().compute_losses(outputs, targets)

    def get_loss(
        self,
        loss: str,
        outputs: Mapping[str, Tensor],
        targets: Sequence[Mapping[str, Tensor]],
        indices: Indices,
        num_boxes: float,
        **kwargs,
    ) -> dict[str, Tensor]:
        """The base losses, plus ``"masks"`` for a layer with ``pred_masks`` (none for the
        auxiliary layers and encoder proposals, which predict no masks)."""
        if loss != "masks":
            return super().get_loss(loss, outputs, targets, indices, num_boxes, **kwargs)
        if "pred_masks" not in outputs:
            return {}
        return self.loss_masks(outputs, targets, indices, num_boxes)

    def check_mask_inputs(
        self, outputs: Mapping[str, object], targets: Sequence[Mapping[str, Tensor]]
    ) -> None:
        """Raise a ValueError unless the last layer has ``pred_masks [B, Q, h, w]`` and every
        target has ``masks [n_i, H, W]`` with one ``(H, W)`` for the batch (shapes only, so
        nothing synchronizes with the GPU)."""
        name = type(self).__name__
        pred_masks = outputs.get("pred_masks")
        if pred_masks is None:
            raise ValueError(
                f"{name}: the 'masks' loss needs outputs['pred_masks'] [B, Q, h, w] (mask "
                f"logits of the last layer), got keys {sorted(outputs)}"
            )
        expected = tuple(outputs["pred_logits"].shape[:2])
        if pred_masks.dim() != 4 or tuple(pred_masks.shape[:2]) != expected:
            raise ValueError(
                f"{name}: expected pred_masks of shape [B, Q, h, w] with [B, Q] = {expected}, got "
                f"{tuple(pred_masks.shape)}"
            )
        frame_sizes = set()
        for image_index, target in enumerate(targets):
            masks = target.get("masks")
            num_targets = len(target["labels"])
            if masks is None:
                raise ValueError(
                    f"{name}: the 'masks' loss needs targets[{image_index}]['masks'] "
                    f"[n_i, H, W], got keys {sorted(target)}"
                )
            if masks.dim() != 3 or masks.shape[0] != num_targets:
                raise ValueError(
                    f"{name}: expected targets[{image_index}]['masks'] of shape "
                    f"[n_i={num_targets}, H, W], got {tuple(masks.shape)}"
                )
            frame_sizes.add(tuple(masks.shape[-2:]))
        if len(frame_sizes) > 1:
            raise ValueError(
                f"{name}: expected all target masks in one padded batch frame [H, W], got "
                f"sizes {sorted(frame_sizes)}"
            )

    def sample_mask_points(self, mask_logits: Tensor) -> Tensor:
        """``[M, num_points, 2]`` normalized ``(x, y)`` points for ``mask_logits [M, 1, h, w]``
        (see :func:`~detr_ext.modeling.losses.mask_losses.sample_points_by_uncertainty`)."""
        return sample_points_by_uncertainty(
            mask_logits,
            self.num_points,
            oversample_ratio=self.oversample_ratio,
            importance_sample_ratio=self.importance_sample_ratio,
        )

    def loss_masks(
        self,
        outputs: Mapping[str, Tensor],
        targets: Sequence[Mapping[str, Tensor]],
        indices: Indices,
        num_boxes: float,
    ) -> dict[str, Tensor]:
        """Mask losses ``{"loss_mask", "loss_dice"}`` of the matched pairs on sampled points.

        Without matched pairs both are ``0 * pred_masks.sum()``: finite zeros that keep the
        mask head in the autograd graph (distributed training expects every worker to use
        it).
        """
        pred_masks = full_precision(outputs["pred_masks"])  # [B, Q, h, w]
        batch_index, query_index = self.matched_query_index(indices)
        if batch_index.numel() == 0:
            zero = pred_masks.sum() * 0.0 + 0.0  # + 0.0: a negative sum gave -0.0 in the log
            return {"loss_mask": zero, "loss_dice": zero}

        mask_logits = pred_masks[batch_index, query_index][:, None]  # [M, 1, h, w]
        target_masks = self.matched_targets(targets, indices, "masks")  # [M, H, W]
        target_masks = target_masks.to(device=mask_logits.device, dtype=mask_logits.dtype)
        points = self.sample_mask_points(mask_logits)  # [M, P, 2]
        with torch.no_grad():
            point_targets = point_sample(target_masks[:, None], points)[:, 0]  # [M, P]
        point_logits = point_sample(mask_logits, points)[:, 0]  # [M, P]
        return {
            "loss_mask": sigmoid_focal_mask_loss(
                point_logits, point_targets, num_boxes, alpha=self.mask_alpha, gamma=self.mask_gamma
            ),
            "loss_dice": dice_loss(point_logits, point_targets, num_boxes),
        }

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, num_points={self.num_points}, "
            f"oversample_ratio={self.oversample_ratio}, "
            f"importance_sample_ratio={self.importance_sample_ratio}, "
            f"mask_alpha={self.mask_alpha}, mask_gamma={self.mask_gamma}"
        )
