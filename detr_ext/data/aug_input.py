"""``ClampedAugInput``: detectron2's ``AugInput`` that never resizes an image side to 0 px.

detectron2's ``ResizeShortestEdge`` (and ``ResizeScale``, ``Resize`` with a computed size) round
the new size with ``int(x + 0.5)``. For a very thin image, e.g. 3 x 2000 px with
``short_edge_length=192, max_size=288``, the long side is capped at 288 px and the short one
becomes 0.43 px, which rounds to 0; PIL then fails deep inside the transform with "height and
width must be > 0". Thin images do occur in real data (scanned strips, panoramas, crops exported
by labeling tools), so every mapper and predictor of detr_ext applies its augmentations to a
:class:`ClampedAugInput`, which raises such a side to 1 px before the transform runs. The clamped
transform object is the one the augmentation returns, so annotations transformed with it later
(boxes, masks) stay consistent with the image.
"""

from __future__ import annotations

import logging

from detectron2.data import transforms as T
from detectron2.utils.logger import log_first_n

__all__ = ["ClampedAugInput", "clamp_resize_transforms"]


def clamp_resize_transforms(transform: T.Transform) -> int:
    """Raise every ``ResizeTransform`` output side of ``transform`` (a ``Transform`` or a
    possibly nested ``TransformList``) that is below 1 px to 1 px, in place.

    Returns:
        How many ``ResizeTransform`` objects were changed.
    """
    if isinstance(transform, T.TransformList):
        return sum(clamp_resize_transforms(inner) for inner in transform.transforms)
    if not isinstance(transform, T.ResizeTransform):
        return 0
    if transform.new_h >= 1 and transform.new_w >= 1:
        return 0
    old = (transform.new_h, transform.new_w)
    transform.new_h = max(1, int(transform.new_h))
    transform.new_w = max(1, int(transform.new_w))
    log_first_n(
        logging.WARNING,
        f"An augmentation resized a {transform.h} x {transform.w} px image to {old[0]} x "
        f"{old[1]} px; using {transform.new_h} x {transform.new_w} px instead (a side is never "
        "made smaller than 1 px). Such thin images carry little for the detector to see.",
        n=3,
        name=__name__,
    )
    return 1


class ClampedAugInput(T.AugInput):
    """``detectron2.data.transforms.AugInput`` whose :meth:`transform` first clamps resized
    sides to at least 1 px (see :func:`clamp_resize_transforms`); otherwise identical."""

    def transform(self, tfm: T.Transform) -> None:
        clamp_resize_transforms(tfm)
        super().transform(tfm)
