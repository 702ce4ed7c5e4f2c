"""A clear error for non-finite detections, before detectron2's postprocessing meets them.

A model whose weights hold NaN / inf (a diverged run's weights loaded from elsewhere, a
checkpoint with corrupt normalization statistics) or whose forward overflows (float16) gives
NaN boxes, and ``detector_postprocess`` then stops with a bare ``AssertionError: Box tensor
contains infinite or NaN!`` that names neither the image nor a cause.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from detectron2.structures import Instances

__all__ = ["NonFiniteOutputError", "as_float32_detections", "check_finite_detections"]


class NonFiniteOutputError(FloatingPointError):
    """The model's detections for an image hold NaN or inf."""


def check_finite_detections(result: Instances, item: Mapping[str, Any]) -> None:
    """Raise :class:`NonFiniteOutputError` if ``result``'s boxes or scores hold NaN / inf.

    Args:
        result: one image's detections (``pred_boxes``, ``scores``), before postprocessing.
        item: the image's input dict, whose ``file_name`` / ``image_id`` name it.
    """
    counts = {}
    for field in ("pred_boxes", "scores"):
        if result.has(field):
            value = result.get(field)
            tensor = value.tensor if hasattr(value, "tensor") else value
            bad = ~torch.isfinite(tensor)
            bad = bad.flatten(1).any(1) if bad.dim() > 1 else bad
            if bad.any():
                counts[field] = int(bad.sum())
    if not counts:
        return
    name = item.get("file_name", item.get("image_id", "<unnamed image>"))
    found = ", ".join(f"{field} of {count}" for field, count in counts.items())
    raise NonFiniteOutputError(
        f"The model's detections for image {name!r} hold NaN or inf ({found} of the "
        f"{len(result)} detections). Expected finite outputs: the weights are probably "
        "non-finite or broken (a checkpoint from a diverged run, or normalization statistics "
        "such as a negative running_var), or the computation overflowed (float16); check the "
        "checkpoint and run in float32."
    )


def as_float32_detections(result: Instances) -> None:
    """Turn ``result``'s scores, boxes and mask logits into float32 in place: a model run in
    bfloat16 / float16 (autocast, or cast with ``.bfloat16()``) gave reduced-precision scores,
    which numpy cannot take (bfloat16) and which tie often."""
    if result.has("scores") and result.scores.is_floating_point():
        result.scores = result.scores.float()
    if result.has("pred_boxes"):
        result.pred_boxes.tensor = result.pred_boxes.tensor.float()
    if result.has("pred_mask_logits"):
        result.pred_mask_logits = result.pred_mask_logits.float()
