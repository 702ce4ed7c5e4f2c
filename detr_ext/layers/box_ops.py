"""Box conversions and (generalized) IoU for DETR-family matching and losses (torch only).

Two box formats are used: ``cxcywh`` (center x, center y, width, height), the format the
detectors predict in, normalized to ``[0, 1]``; and ``xyxy`` (x0, y0, x1, y1), the format all
IoU functions here expect. The formulas follow DETR / detrex exactly, without epsilons, so the
values match theirs bit for bit; in particular a pair of zero-area boxes has an undefined
(NaN) IoU, and callers are expected to pass boxes with ``x1 >= x0`` and ``y1 >= y0``. That
precondition is not checked, because checking it would synchronize the GPU on every call.

``box_iou`` and ``generalized_box_iou`` are pairwise (``[N, 4] x [M, 4] -> [N, M]``);
``matched_box_iou`` and ``matched_generalized_box_iou`` compare row ``i`` with row ``i``
(``[N, 4] x [N, 4] -> [N]``) and give the same values as the diagonal of the pairwise
versions at a fraction of the memory.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "box_area",
    "box_cxcywh_to_xyxy",
    "box_iou",
    "box_xyxy_to_cxcywh",
    "generalized_box_iou",
    "inverse_sigmoid",
    "matched_box_iou",
    "matched_generalized_box_iou",
]


def _check_boxes(boxes: Tensor, name: str, batched: bool = True) -> None:
    """Raise a ValueError unless ``boxes`` is ``[..., 4]`` (``[N, 4]`` when not ``batched``)."""
    if boxes.dim() == 0 or boxes.shape[-1] != 4:
        raise ValueError(
            f"{name}: expected boxes with 4 coordinates in the last dimension, "
            f"got shape {tuple(boxes.shape)}"
        )
    if not batched and boxes.dim() != 2:
        raise ValueError(f"{name}: expected boxes of shape [N, 4], got {tuple(boxes.shape)}")


def box_cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    """Convert ``[..., 4]`` boxes from ``(cx, cy, w, h)`` to ``(x0, y0, x1, y1)``."""
    _check_boxes(boxes, "box_cxcywh_to_xyxy")
    center_x, center_y, width, height = boxes.unbind(-1)
    return torch.stack(
        [
            center_x - 0.5 * width,
            center_y - 0.5 * height,
            center_x + 0.5 * width,
            center_y + 0.5 * height,
        ],
        dim=-1,
    )


def box_xyxy_to_cxcywh(boxes: Tensor) -> Tensor:
    """Convert ``[..., 4]`` boxes from ``(x0, y0, x1, y1)`` to ``(cx, cy, w, h)``."""
    _check_boxes(boxes, "box_xyxy_to_cxcywh")
    x0, y0, x1, y1 = boxes.unbind(-1)
    return torch.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], dim=-1)


def box_area(boxes: Tensor) -> Tensor:
    """Area of ``[..., 4]`` xyxy boxes, shape ``[...]``."""
    _check_boxes(boxes, "box_area")
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def box_iou(boxes1: Tensor, boxes2: Tensor) -> tuple[Tensor, Tensor]:
    """Pairwise IoU of xyxy boxes.

    Args:
        boxes1: ``[N, 4]`` xyxy boxes.
        boxes2: ``[M, 4]`` xyxy boxes.

    Returns:
        ``(iou, union)``, both ``[N, M]``.
    """
    _check_boxes(boxes1, "box_iou boxes1", batched=False)
    _check_boxes(boxes2, "box_iou boxes2", batched=False)
    area1 = box_area(boxes1)
    area2 = box_area(boxes2)
    top_left = torch.max(boxes1[:, None, :2], boxes2[None, :, :2])  # [N, M, 2]
    bottom_right = torch.min(boxes1[:, None, 2:], boxes2[None, :, 2:])  # [N, M, 2]
    overlap_wh = (bottom_right - top_left).clamp(min=0)
    intersection = overlap_wh[..., 0] * overlap_wh[..., 1]
    union = area1[:, None] + area2[None, :] - intersection
    return intersection / union, union


def generalized_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise generalized IoU (Rezatofighi et al., 2019) of xyxy boxes.

    Args:
        boxes1: ``[N, 4]`` xyxy boxes.
        boxes2: ``[M, 4]`` xyxy boxes.

    Returns:
        ``[N, M]`` GIoU values in ``[-1, 1]``.
    """
    iou, union = box_iou(boxes1, boxes2)
    top_left = torch.min(boxes1[:, None, :2], boxes2[None, :, :2])
    bottom_right = torch.max(boxes1[:, None, 2:], boxes2[None, :, 2:])
    enclosing_wh = (bottom_right - top_left).clamp(min=0)
    enclosing_area = enclosing_wh[..., 0] * enclosing_wh[..., 1]
    return iou - (enclosing_area - union) / enclosing_area


def _check_matched(boxes1: Tensor, boxes2: Tensor, name: str) -> None:
    _check_boxes(boxes1, f"{name} boxes1", batched=False)
    _check_boxes(boxes2, f"{name} boxes2", batched=False)
    if boxes1.shape != boxes2.shape:
        raise ValueError(
            f"{name}: expected boxes1 and boxes2 of the same shape [N, 4], "
            f"got {tuple(boxes1.shape)} and {tuple(boxes2.shape)}"
        )


def _matched_iou_and_union(boxes1: Tensor, boxes2: Tensor) -> tuple[Tensor, Tensor]:
    top_left = torch.max(boxes1[:, :2], boxes2[:, :2])
    bottom_right = torch.min(boxes1[:, 2:], boxes2[:, 2:])
    overlap_wh = (bottom_right - top_left).clamp(min=0)
    intersection = overlap_wh[:, 0] * overlap_wh[:, 1]
    union = box_area(boxes1) + box_area(boxes2) - intersection
    return intersection / union, union


def matched_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """IoU of ``boxes1[i]`` with ``boxes2[i]``: ``[N, 4] x [N, 4] -> [N]`` (xyxy)."""
    _check_matched(boxes1, boxes2, "matched_box_iou")
    return _matched_iou_and_union(boxes1, boxes2)[0]


def matched_generalized_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Generalized IoU of ``boxes1[i]`` with ``boxes2[i]``: ``[N, 4] x [N, 4] -> [N]`` (xyxy)."""
    _check_matched(boxes1, boxes2, "matched_generalized_box_iou")
    iou, union = _matched_iou_and_union(boxes1, boxes2)
    top_left = torch.min(boxes1[:, :2], boxes2[:, :2])
    bottom_right = torch.max(boxes1[:, 2:], boxes2[:, 2:])
    enclosing_wh = (bottom_right - top_left).clamp(min=0)
    enclosing_area = enclosing_wh[:, 0] * enclosing_wh[:, 1]
    return iou - (enclosing_area - union) / enclosing_area


def inverse_sigmoid(x: Tensor, eps: float = 1e-3) -> Tensor:
    """The logit ``log(x / (1 - x))`` of ``x`` clamped to [0, 1], with both terms clamped to
    ``>= eps`` so that 0 and 1 map to finite values.

    ``eps = 1e-3`` is detrex's default (DINO, Deformable DETR box refinement); the original
    Deformable DETR used ``1e-5``. Same shape as ``x``.
    """
    x = x.clamp(min=0, max=1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))
