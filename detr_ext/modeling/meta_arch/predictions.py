"""Scoring and decoding of a DETR-family prediction dict: the class scores of each query turned
into detections (:func:`softmax_predictions` for DETR, :func:`sigmoid_topk_predictions` for
Deformable DETR / DINO), checked (:func:`check_predictions`) and wrapped as detectron2
``Instances`` in the network input's frame (:func:`make_instances`).

:class:`~detr_ext.modeling.meta_arch.base.DetectorBase` exposes them as its methods
(``softmax_predictions``, ``inference_softmax``, ...), which delegate here.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from detectron2.structures import Boxes, Instances
from torch import Tensor

from detr_ext.layers.box_ops import box_cxcywh_to_xyxy

__all__ = [
    "check_predictions",
    "make_instances",
    "sigmoid_topk_predictions",
    "softmax_predictions",
]


def make_instances(
    scores: Tensor, labels: Tensor, boxes: Tensor, image_size: tuple[int, int]
) -> Instances:
    """Instances of one image from ``scores [N]``, ``labels [N]`` and normalized
    ``cxcywh`` ``boxes [N, 4]``, scaled to absolute ``xyxy`` in ``image_size``."""
    result = Instances(image_size)
    result.pred_boxes = Boxes(box_cxcywh_to_xyxy(boxes))
    result.pred_boxes.scale(scale_x=image_size[1], scale_y=image_size[0])
    result.scores = scores
    result.pred_classes = labels
    return result


def softmax_predictions(logits: Tensor, boxes: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """DETR scoring: per query, the best class of the softmax without no-object.

    Args:
        logits: ``[B, Q, K + 1]``, the last class being no-object.
        boxes: ``[B, Q, 4]`` normalized ``cxcywh``.

    Returns:
        ``(scores [B, Q], labels [B, Q], boxes [B, Q, 4])``.
    """
    scores, labels = F.softmax(logits, dim=-1)[:, :, :-1].max(-1)
    return scores, labels, boxes


def sigmoid_topk_predictions(
    logits: Tensor, boxes: Tensor, k: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Deformable DETR / DINO scoring: the ``k`` best (query, class) pairs per image.

    Sigmoid scores are ranked over all ``Q * K`` pairs; pair ``i`` is query ``i // K`` with
    class ``i % K``, so one query may give several detections.

    Args:
        logits: ``[B, Q, K]``.
        boxes: ``[B, Q, 4]`` normalized ``cxcywh``.
        k: detections per image, capped at ``Q * K``.

    Returns:
        ``(scores [B, k], labels [B, k], boxes [B, k, 4])``, by decreasing score.
    """
    batch_size, _, num_classes = logits.shape
    k = min(k, logits.shape[1] * num_classes)
    scores, pair_index = torch.topk(logits.sigmoid().view(batch_size, -1), k, dim=1)
    query_index = torch.div(pair_index, num_classes, rounding_mode="floor")
    labels = pair_index % num_classes
    boxes = torch.gather(boxes, 1, query_index.unsqueeze(-1).expand(-1, -1, 4))
    return scores, labels, boxes


def check_predictions(
    logits: Tensor,
    boxes: Tensor,
    image_sizes: Sequence[tuple[int, int]],
    where: str,
) -> None:
    """Raise a ``ValueError`` naming ``where`` (e.g. ``"DINO.inference_sigmoid_topk"``) unless
    ``logits`` is ``[B, Q, C]``, ``boxes`` ``[B, Q, 4]`` and ``image_sizes`` has ``B`` sizes."""
    if logits.dim() != 3 or boxes.shape != (*logits.shape[:2], 4):
        raise ValueError(
            f"{where}: expected logits [B, Q, C] and boxes [B, Q, 4], "
            f"got {tuple(logits.shape)} and {tuple(boxes.shape)}"
        )
    if len(image_sizes) != logits.shape[0]:
        raise ValueError(f"{where}: expected {logits.shape[0]} image sizes, got {len(image_sizes)}")
