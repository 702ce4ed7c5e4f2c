"""One-to-one bipartite matching of predictions to ground truth (DETR's Hungarian matcher).

The matching cost of prediction ``q`` and target ``t`` is

    cost_class * C_class[q, t] + cost_bbox * |box_q - box_t|_1 + cost_giou * (-GIoU(q, t))

with boxes in normalized ``cxcywh`` (the GIoU is taken after converting to ``xyxy``). The
class term is ``-softmax(logits)[q, label_t]`` for ``"ce_cost"`` (DETR) or the focal-loss
cost of Deformable DETR for ``"focal_loss_cost"``. The formulas follow detrex exactly, so the
same predictions give the same assignment.

Costs are computed in float32 whatever the dtype of the predictions (float16 / bfloat16 under
mixed precision are cast up, autocast is turned off): in float16 the focal cost's
``log(1 - p + 1e-8)`` is ``log(0)`` for confident logits, and ``torch.cdist`` has no
half-precision CPU kernel.

Subclasses reuse the pieces: :meth:`HungarianMatcher.class_cost` (the class term),
:meth:`HungarianMatcher.target_class_cost` (the class term against the batch's targets),
:meth:`HungarianMatcher.compute_cost` (the per-image cost matrices) and
:meth:`HungarianMatcher.assign` (one cost matrix to matched index pairs; a many-to-one
matcher overrides only this).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from detr_ext.layers.box_ops import box_cxcywh_to_xyxy, generalized_box_iou
from detr_ext.modeling.losses.precision import autocast_disabled, full_precision

__all__ = ["HungarianMatcher"]

COST_CLASS_TYPES = ("ce_cost", "focal_loss_cost")


def check_detection_inputs(
    outputs: Mapping[str, Tensor], targets: Sequence[Mapping[str, Tensor]], where: str
) -> None:
    """Raise a ValueError unless ``outputs`` / ``targets`` follow the matcher's contract.

    Only shapes are checked (no values), so nothing synchronizes with the GPU.
    """
    for key in ("pred_logits", "pred_boxes"):
        if key not in outputs:
            raise ValueError(f"{where}: outputs must contain {key!r}, got keys {sorted(outputs)}")
    logits, boxes = outputs["pred_logits"], outputs["pred_boxes"]
    if logits.dim() != 3:
        raise ValueError(
            f"{where}: expected pred_logits of shape [B, Q, K], got {tuple(logits.shape)}"
        )
    if boxes.shape != (*logits.shape[:2], 4):
        raise ValueError(
            f"{where}: expected pred_boxes of shape [B, Q, 4] = {(*logits.shape[:2], 4)}, "
            f"got {tuple(boxes.shape)}"
        )
    if len(targets) != logits.shape[0]:
        raise ValueError(
            f"{where}: expected one target dict per image ({logits.shape[0]}), got {len(targets)}"
        )
    for image_index, target in enumerate(targets):
        if "labels" not in target or "boxes" not in target:
            raise ValueError(
                f"{where}: targets[{image_index}] must contain 'labels' and 'boxes', "
                f"got keys {sorted(target)}"
            )
        labels, target_boxes = target["labels"], target["boxes"]
        if labels.dim() != 1 or target_boxes.shape != (labels.shape[0], 4):
            raise ValueError(
                f"{where}: targets[{image_index}] expected labels [n] and boxes [n, 4], "
                f"got labels {tuple(labels.shape)} and boxes {tuple(target_boxes.shape)}"
            )
        if labels.is_floating_point() or labels.is_complex():
            raise ValueError(
                f"{where}: targets[{image_index}]['labels'] must be an integer tensor, "
                f"got {labels.dtype}"
            )


class HungarianMatcher(nn.Module):
    """Match each target to exactly one prediction by minimizing the total matching cost.

    Args:
        cost_class: weight of the classification cost.
        cost_bbox: weight of the L1 cost between ``cxcywh`` boxes.
        cost_giou: weight of the negative generalized IoU.
        cost_class_type: ``"focal_loss_cost"`` (sigmoid focal cost, Deformable DETR / DINO;
            the default, as in detrex) or ``"ce_cost"`` (softmax over the ``K`` logits, DETR).
        alpha: focal cost balance between positives and negatives.
        gamma: focal cost focusing exponent.

    Inputs of :meth:`forward`:
        outputs: ``{"pred_logits": [B, Q, K], "pred_boxes": [B, Q, 4]}`` (``cxcywh``, normalized);
            other keys are ignored.
        targets: ``B`` dicts with ``"labels"``: int64 ``[n_i]`` and ``"boxes"``: ``[n_i, 4]``
            (normalized ``cxcywh``).

    Returns:
        A list of ``B`` pairs ``(query_index, target_index)``, int64 CPU tensors of length
        ``min(Q, n_i)``: query ``query_index[k]`` is matched to target ``target_index[k]``.
    """

    def __init__(
        self,
        cost_class: float = 1.0,
        cost_bbox: float = 1.0,
        cost_giou: float = 1.0,
        cost_class_type: str = "focal_loss_cost",
        alpha: float = 0.25,
        gamma: float = 2.0,
    ) -> None:
        super().__init__()
        if cost_class == 0 and cost_bbox == 0 and cost_giou == 0:
            raise ValueError(
                "HungarianMatcher: expected at least one non-zero cost weight, got "
                f"cost_class={cost_class}, cost_bbox={cost_bbox}, cost_giou={cost_giou}"
            )
        if cost_class_type not in COST_CLASS_TYPES:
            raise ValueError(
                f"HungarianMatcher: expected cost_class_type in {COST_CLASS_TYPES}, "
                f"got {cost_class_type!r}"
            )
        self.cost_class = cost_class
        self.cost_bbox = cost_bbox
        self.cost_giou = cost_giou
        self.cost_class_type = cost_class_type
        self.alpha = alpha
        self.gamma = gamma

    def class_cost(self, logits: Tensor, labels: Tensor) -> Tensor:
        """Classification cost of every prediction against every target label.

        Args:
            logits: ``[P, K]`` class logits (all queries of all images, flattened); float16 /
                bfloat16 logits are cast to float32 first.
            labels: ``[N]`` int64 target labels (all targets of all images, concatenated).

        Returns:
            ``[P, N]`` cost (float32 or float64), lower is a better match.
        """
        logits = full_precision(logits)
        if self.cost_class_type == "ce_cost":
            return -logits.softmax(-1)[:, labels]
        return self.focal_cost(logits)[:, labels]

    def focal_cost(self, logits: Tensor) -> Tensor:
        """Focal-loss cost of every logit: ``[P, K] -> [P, K]``, the focal loss of calling the
        prediction positive minus that of calling it negative (lower is a better match)."""
        prob = full_precision(logits).sigmoid()
        negative_cost = (1 - self.alpha) * (prob**self.gamma) * (-(1 - prob + 1e-8).log())
        positive_cost = self.alpha * ((1 - prob) ** self.gamma) * (-(prob + 1e-8).log())
        return positive_cost - negative_cost

    def target_class_cost(self, logits: Tensor, targets: Sequence[Mapping[str, Tensor]]) -> Tensor:
        """Class cost of every prediction against every target of the batch.

        Args:
            logits: ``[P, K]`` logits of all queries of all images, flattened.
            targets: the ``B`` target dicts, whose targets are taken in order.

        Returns:
            ``[P, sum(n_i)]``: :meth:`class_cost` of the concatenated labels here; a grounding
            matcher scores each target's phrase through its token map instead.
        """
        return self.class_cost(logits, torch.cat([target["labels"] for target in targets]))

    @torch.no_grad()
    def compute_cost(
        self, outputs: Mapping[str, Tensor], targets: Sequence[Mapping[str, Tensor]]
    ) -> list[Tensor]:
        """The matching cost of every query against every target of its own image.

        The full ``[B * Q, sum(n_i)]`` matrix is computed in one batched pass on the device of
        the predictions and moved to the CPU once; the per-image blocks are then sliced out.
        It is float32 for float16 / bfloat16 / float32 predictions (float64 for float64),
        whether or not autocast is on.

        Returns:
            ``B`` CPU tensors, the ``i``-th of shape ``[Q, n_i]``.
        """
        check_detection_inputs(outputs, targets, type(self).__name__)
        batch_size, num_queries = outputs["pred_logits"].shape[:2]
        logits = full_precision(outputs["pred_logits"].flatten(0, 1))  # [B * Q, K]
        pred_boxes = full_precision(outputs["pred_boxes"].flatten(0, 1))  # [B * Q, 4]
        target_boxes = torch.cat([target["boxes"] for target in targets])  # [N, 4]
        target_boxes = target_boxes.to(pred_boxes.dtype)

        with autocast_disabled(pred_boxes.device):
            class_cost = self.target_class_cost(logits, targets)
            bbox_cost = torch.cdist(pred_boxes, target_boxes, p=1)
            giou_cost = -generalized_box_iou(
                box_cxcywh_to_xyxy(pred_boxes), box_cxcywh_to_xyxy(target_boxes)
            )
            cost = (
                self.cost_bbox * bbox_cost
                + self.cost_class * class_cost
                + self.cost_giou * giou_cost
            )
        cost = cost.view(batch_size, num_queries, -1).cpu()  # [B, Q, N]
        if not torch.isfinite(cost).all():
            cost = self._nonfinite_cost(cost, logits, pred_boxes, targets)

        sizes = [len(target["boxes"]) for target in targets]
        return [block[image_index] for image_index, block in enumerate(cost.split(sizes, dim=-1))]

    def _nonfinite_cost(
        self,
        cost: Tensor,
        logits: Tensor,
        pred_boxes: Tensor,
        targets: Sequence[Mapping[str, Tensor]],
    ) -> Tensor:
        """A non-finite cost: invalid targets are the data's fault and raise; non-finite
        predictions (a diverging model) are matched anyway, with their cost entries made
        large, so that the losses come out non-finite and the trainer skips the step with a
        message naming the divergence. Raising here instead would blame the matcher, and under
        DDP it would stop this rank before the gradient all-reduce that the others wait in."""
        for image_index, target in enumerate(targets):
            boxes = target["boxes"]
            invalid = ~torch.isfinite(boxes).all(-1) | (boxes[:, 2:] < 0).any(-1)
            if invalid.any():
                raise ValueError(
                    f"{type(self).__name__}: targets[{image_index}] has "
                    f"{int(invalid.sum())} box(es) with non-finite values or negative width / "
                    f"height, e.g. {boxes[invalid][0].tolist()} (normalized cxcywh); expected "
                    "valid boxes (register_coco_format_dataset drops such annotations)"
                )
        zero_area_targets = any((target["boxes"][:, 2:] <= 0).any() for target in targets)
        if zero_area_targets and (pred_boxes[..., 2:] <= 0).any():
            raise ValueError(
                f"{type(self).__name__}: a target box of zero width or height met a predicted "
                "box of zero width or height, whose GIoU is 0 / 0 = NaN; expected target boxes "
                "of positive width and height (detectron2's filter_empty_instances, which the "
                "bundled mappers apply, drops the others)"
            )
        if torch.isfinite(logits).all() and torch.isfinite(pred_boxes).all():
            raise ValueError(
                f"{type(self).__name__}: the matching cost contains NaN or inf although "
                "predictions and targets are finite; expected finite cost weights, got "
                f"cost_class={self.cost_class}, cost_bbox={self.cost_bbox}, "
                f"cost_giou={self.cost_giou}"
            )
        largest = torch.finfo(cost.dtype).max / 4
        return torch.nan_to_num(cost, nan=largest, posinf=largest, neginf=-largest)

    def assign(self, cost: Tensor) -> tuple[Tensor, Tensor]:
        """Solve one image's assignment problem.

        Args:
            cost: ``[Q, n]`` CPU cost matrix.

        Returns:
            ``(query_index, target_index)``, int64 CPU tensors of length ``min(Q, n)``.
        """
        if not torch.isfinite(cost).all():
            raise ValueError(
                f"{type(self).__name__}: the matching cost contains NaN or inf; expected finite "
                "pred_logits and valid boxes (non-negative width and height)"
            )
        # scipy solves in float64 anyway; converting here also accepts half / bfloat16 costs.
        query_index, target_index = linear_sum_assignment(cost.to(torch.float64).numpy())
        return (
            torch.as_tensor(query_index, dtype=torch.int64),
            torch.as_tensor(target_index, dtype=torch.int64),
        )

    @torch.no_grad()
    def forward(
        self, outputs: Mapping[str, Tensor], targets: Sequence[Mapping[str, Tensor]]
    ) -> list[tuple[Tensor, Tensor]]:
        """Match predictions to targets image by image; see the class docstring."""
        return [self.assign(cost) for cost in self.compute_cost(outputs, targets)]

    def extra_repr(self) -> str:
        return (
            f"cost_class={self.cost_class}, cost_bbox={self.cost_bbox}, "
            f"cost_giou={self.cost_giou}, cost_class_type={self.cost_class_type!r}, "
            f"alpha={self.alpha}, gamma={self.gamma}"
        )
