"""Model outputs as json-ready records: :func:`instances_to_dicts` (detections, masks as COCO
RLE), :func:`panoptic_to_dicts` (the segments of a panoptic segmentation, things and stuff),
:func:`mask_to_rle`. Category ids are mapped back to the dataset's own. Used by
``tools/demo.py``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from detectron2.data import Metadata
from detectron2.structures import Instances

__all__ = [
    "contiguous_to_dataset_ids",
    "instances_to_dicts",
    "mask_to_rle",
    "panoptic_to_dicts",
]


def contiguous_to_dataset_ids(metadata: Metadata) -> dict[int, int] | None:
    """The inverse of ``metadata.thing_dataset_id_to_contiguous_id`` (model class index ->
    the dataset's own category id), or ``None`` when the metadata has no such mapping."""
    return _inverse(metadata, "thing_dataset_id_to_contiguous_id")


def _phrases_are_classes(phrases: Sequence[str] | None, metadata: Metadata | None) -> bool:
    """Whether a text-prompted model's phrases are the dataset's classes (default prompt)."""
    class_names = metadata.get("thing_classes", None) if metadata is not None else None
    return phrases is None or (class_names is not None and list(phrases) == list(class_names))


def mask_to_rle(mask: torch.Tensor | np.ndarray) -> dict[str, Any]:
    """A ``[H, W]`` mask (True / nonzero = inside) as json-ready COCO RLE:
    ``{"size": [H, W], "counts": str}`` (``pycocotools.mask.decode`` reads it back)."""
    from pycocotools import mask as mask_utils

    mask = np.asarray(mask.cpu() if isinstance(mask, torch.Tensor) else mask)
    if mask.ndim != 2:
        raise ValueError(f"mask_to_rle: expected a [H, W] mask, got shape {mask.shape}")
    rle = mask_utils.encode(np.asfortranarray(mask.astype(bool), dtype=np.uint8))
    return {"size": [int(size) for size in rle["size"]], "counts": rle["counts"].decode("ascii")}


def instances_to_dicts(
    instances: Instances,
    metadata: Metadata | None = None,
    threshold: float = 0.0,
    phrases: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """Detections with ``score >= threshold`` as json-ready dicts, best first:
    ``{"bbox_xyxy": [x0, y0, x1, y1], "score", "category_id", "category_name"}``, plus
    ``"segmentation"`` (COCO RLE of ``pred_masks``, see :func:`mask_to_rle`) for a mask model
    and ``"phrase"`` when ``phrases`` (of a text-prompted model, see :meth:`Predictor.predict`)
    are given.

    ``category_id`` is the dataset's own category id when ``metadata`` has
    ``thing_dataset_id_to_contiguous_id`` (``None`` for a class it does not map: an extra
    class of a model with more classes than the dataset), else the model's class index;
    ``category_name``
    comes from ``metadata.thing_classes`` (``None`` without it). For a custom prompt (phrases
    other than the dataset's classes) both are ``None`` and ``"phrase"`` names the detection.
    """
    if not _phrases_are_classes(phrases, metadata):
        metadata = None
    to_dataset_id = contiguous_to_dataset_ids(metadata) if metadata is not None else None
    class_names = metadata.get("thing_classes", None) if metadata is not None else None
    boxes = instances.pred_boxes.tensor.tolist()
    scores = instances.scores.tolist()
    classes = instances.pred_classes.tolist()
    masks = instances.pred_masks if instances.has("pred_masks") else None
    detections = []
    for index in sorted(range(len(scores)), key=lambda i: -scores[i]):
        box, score, label = boxes[index], scores[index], classes[index]
        if score < threshold:
            continue
        name = class_names[label] if class_names and 0 <= label < len(class_names) else None
        # A class past the dataset's categories (model.num_classes larger) has no id: None,
        # not its index, which may be another category's id.
        category_id = to_dataset_id.get(label) if to_dataset_id else label
        detection = {
            "bbox_xyxy": [round(float(value), 2) for value in box],
            "score": round(float(score), 4),
            "category_id": category_id if phrases is None or metadata is not None else None,
            "category_name": name,
        }
        if masks is not None:
            detection["segmentation"] = mask_to_rle(masks[index])
        if phrases is not None:
            if not 0 <= label < len(phrases):
                raise ValueError(
                    f"instances_to_dicts: pred_classes holds {label}, expected a phrase index "
                    f"in [0, {len(phrases)}) of {list(phrases)}"
                )
            detection["phrase"] = phrases[label]
        detections.append(detection)
    return detections


def panoptic_to_dicts(
    panoptic_seg: tuple[torch.Tensor, Sequence[dict[str, Any]]],
    metadata: Metadata | None = None,
) -> list[dict[str, Any]]:
    """The segments of a panoptic segmentation as json-ready dicts, in id order:
    ``{"id", "isthing", "category_id", "category_name", "score", "area", "segmentation"}``.

    ``panoptic_seg`` is a model's ``(segment ids [H, W], segments_info)`` (void pixels 0, the
    ``segments_info`` dicts with contiguous ``category_id`` over things and stuff together and
    ``isthing``, as detectron2's ``COCOPanopticEvaluator`` reads them). ``category_id`` becomes
    the dataset's own id through ``metadata.thing_dataset_id_to_contiguous_id`` (things) or
    ``stuff_dataset_id_to_contiguous_id`` (stuff), as detectron2's evaluator maps them; the
    name comes from ``metadata.stuff_classes`` (all categories, detectron2's unified panoptic
    metadata), else ``thing_classes`` for things. ``area`` is counted from the segment ids
    (pixels), ``segmentation`` is the segment's COCO RLE (:func:`mask_to_rle`).

    Raises:
        ValueError: the segment ids are not ``[H, W]``, or a ``segments_info`` entry lacks
            ``id`` / ``category_id``.
    """
    segment_ids, segments_info = panoptic_seg
    segment_ids = torch.as_tensor(segment_ids).cpu()
    if segment_ids.dim() != 2:
        raise ValueError(
            f"panoptic_to_dicts: expected segment ids [H, W], got shape {tuple(segment_ids.shape)}"
        )
    thing_ids = _inverse(metadata, "thing_dataset_id_to_contiguous_id")
    stuff_ids = _inverse(metadata, "stuff_dataset_id_to_contiguous_id")
    stuff_names = list(metadata.get("stuff_classes", None) or []) if metadata is not None else []
    thing_names = list(metadata.get("thing_classes", None) or []) if metadata is not None else []
    segments = []
    for info in sorted(segments_info, key=lambda segment: int(segment.get("id", -1))):
        if "id" not in info or "category_id" not in info:
            raise ValueError(
                "panoptic_to_dicts: expected segments_info entries with 'id' and 'category_id', "
                f"got keys {sorted(info)}"
            )
        label, isthing = int(info["category_id"]), bool(info.get("isthing", True))
        to_dataset_id = thing_ids if isthing else stuff_ids
        names = stuff_names or (thing_names if isthing else [])
        mask = segment_ids == int(info["id"])
        segments.append(
            {
                "id": int(info["id"]),
                "isthing": isthing,
                "category_id": to_dataset_id.get(label) if to_dataset_id else label,
                "category_name": names[label] if 0 <= label < len(names) else None,
                "score": round(float(info["score"]), 4) if "score" in info else None,
                "area": int(mask.sum()),
                "segmentation": mask_to_rle(mask),
            }
        )
    return segments


def _inverse(metadata: Metadata | None, key: str) -> dict[int, int] | None:
    """The inverse of the ``metadata.<key>`` mapping (dataset id -> contiguous), or None."""
    mapping = metadata.get(key, None) if metadata is not None else None
    if not mapping:
        return None
    return {int(contiguous): int(dataset_id) for dataset_id, contiguous in mapping.items()}
