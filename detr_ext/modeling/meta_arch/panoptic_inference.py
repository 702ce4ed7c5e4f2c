"""Panoptic segmentation from per-query masks, classes and scores (DETR's segmentation head,
MaskFormer-style merging), in detectron2's panoptic format.

:func:`combine_panoptic` is a pure function of tensors, so it can be tested by hand and reused
by any detector that predicts one mask per query.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = ["combine_panoptic"]


def combine_panoptic(
    mask_logits: Tensor,
    scores: Tensor,
    labels: Tensor,
    is_thing: Sequence[bool],
    score_threshold: float = 0.85,
    overlap_threshold: float = 0.8,
    min_area: int = 5,
    mask_threshold: float = 0.5,
) -> tuple[Tensor, list[dict[str, Any]]]:
    """Merge one image's query masks into a panoptic segmentation.

    1. Keep the queries whose ``score > score_threshold`` (DETR's 0.85); ``labels`` are the
       best real class of each query, so no-object never appears here.
    2. Each pixel goes to the kept query with the largest ``score * sigmoid(mask_logit)``
       (MaskFormer's score-weighted argmax; ties go to the higher score). A query's segment
       is the pixels it wins where its own mask is on (``sigmoid >= mask_threshold``), so a
       pixel no mask covers stays void (0).
    3. Drop a segment whose visible area is under ``overlap_threshold`` of its own mask's
       area (it is mostly hidden by others), or under ``min_area`` pixels; its pixels stay
       void (DETR gives them to the other masks). ``area < min_area`` is dropped: the
       default 5 drops segments of at most 4 px, as DETR.
    4. Stuff segments of one class merge into one segment (the first, highest-score query's
       id, score and ``isthing``; areas add up); things keep one segment per query.

    Args:
        mask_logits: ``[Q, H, W]`` mask logits at the output resolution.
        scores: ``[Q]`` class scores in ``[0, 1]``.
        labels: ``[Q]`` int64 contiguous class ids, indices into ``is_thing``.
        is_thing: per contiguous class, True for a thing class, False for stuff.
        score_threshold: queries at or below this score are ignored.
        overlap_threshold: smallest visible / own area of a kept segment.
        min_area: smallest visible area in pixels of a kept segment.
        mask_threshold: probability at which a query's own mask is on.

    Returns:
        ``(panoptic_seg, segments_info)``: ``panoptic_seg`` is ``[H, W]`` int32, 0 for void
        and segment ids from 1; ``segments_info`` has one dict per segment with ``"id"``,
        ``"isthing"``, ``"category_id"`` (contiguous), ``"score"`` and ``"area"`` (pixels),
        as detectron2's ``COCOPanopticEvaluator`` reads them.
    """
    if mask_logits.dim() != 3:
        raise ValueError(
            f"combine_panoptic: expected mask_logits [Q, H, W], got {tuple(mask_logits.shape)}"
        )
    num_queries, height, width = mask_logits.shape
    if scores.shape != (num_queries,) or labels.shape != (num_queries,):
        raise ValueError(
            f"combine_panoptic: expected scores and labels [{num_queries}], got "
            f"{tuple(scores.shape)} and {tuple(labels.shape)}"
        )
    if num_queries and (labels.min() < 0 or labels.max() >= len(is_thing)):
        raise ValueError(
            f"combine_panoptic: expected labels in [0, {len(is_thing)}) (is_thing has one "
            f"entry per class), got labels from {int(labels.min())} to {int(labels.max())}"
        )
    panoptic_seg = torch.zeros((height, width), dtype=torch.int32, device=mask_logits.device)
    segments_info: list[dict[str, Any]] = []

    keep = scores > score_threshold
    if not bool(keep.any()):
        return panoptic_seg, segments_info
    # Highest score first: argmax ties and the merged stuff segment's score go to it.
    order = torch.argsort(scores[keep], descending=True, stable=True)
    scores = scores[keep][order].float()
    labels = labels[keep][order]
    probabilities = mask_logits[keep][order].float().sigmoid()  # [N, H, W]
    owner = (scores[:, None, None] * probabilities).argmax(0)  # [H, W]

    stuff_segment: dict[int, dict[str, Any]] = {}  # class -> its merged segment
    for index, (score, label) in enumerate(zip(scores.tolist(), labels.tolist(), strict=True)):
        own_mask = probabilities[index] >= mask_threshold
        visible = (owner == index) & own_mask
        own_area, area = int(own_mask.sum()), int(visible.sum())
        if area == 0 or area < min_area or area < overlap_threshold * own_area:
            continue
        thing = bool(is_thing[label])
        if not thing and label in stuff_segment:
            segment = stuff_segment[label]
            segment["area"] += area
            panoptic_seg[visible] = segment["id"]
            continue
        segment = {
            "id": len(segments_info) + 1,
            "isthing": thing,
            "category_id": label,
            "score": score,
            "area": area,
        }
        segments_info.append(segment)
        panoptic_seg[visible] = segment["id"]
        if not thing:
            stuff_segment[label] = segment
    return panoptic_seg, segments_info
