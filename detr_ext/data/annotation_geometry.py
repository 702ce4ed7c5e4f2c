"""Geometry of COCO annotations as exported: is a ``bbox`` usable, is a number a finite json
number, the pixel area of a polygon / RLE mask, a box clipped to its image, and a mask as the
compressed RLE detectron2's transforms take. Used by :mod:`detr_ext.data.coco_validation` and
the dataset mapper."""

from __future__ import annotations

import math
from typing import Any

__all__ = [
    "BOX_OUTSIDE_TOLERANCE",
    "box_size",
    "clip_box_to_image",
    "compressed_rle",
    "is_number",
    "mask_area",
]

BOX_OUTSIDE_TOLERANCE = 1.0
"""Pixels a box may extend past its image before it is clipped (exports round coordinates)."""

_NUMBER_TYPES = frozenset((int, float))  # what json numbers parse to; bool is not one


def box_size(box: Any) -> tuple[float, float] | None:
    """(width, height) of a valid COCO ``[x, y, w, h]``: 4 finite numbers (not bools) with
    w > 0 and h > 0; None otherwise."""
    if type(box) is not list or len(box) != 4:
        return None
    x, y, width, height = box
    if not (
        type(x) in _NUMBER_TYPES
        and type(y) in _NUMBER_TYPES
        and type(width) in _NUMBER_TYPES
        and type(height) in _NUMBER_TYPES
    ):
        return None
    try:
        # NaN and inf propagate through the sum: one test for all four (hot loop).
        finite = math.isfinite(x + y + width + height)
    except OverflowError:  # an int too large for a float
        return None
    return (width, height) if finite and width > 0 and height > 0 else None


def clip_box_to_image(box: list, image: dict) -> list | None:
    """``box`` (a valid ``[x, y, w, h]``) clipped to its image; the same list when it extends at
    most :data:`BOX_OUTSIDE_TOLERANCE` px past every border, None when it lies entirely outside
    (no overlap of positive area)."""
    width, height = image.get("width"), image.get("height")
    if not (is_number(width) and is_number(height)):
        return box
    x0, y0 = box[0], box[1]
    x1, y1 = x0 + box[2], y0 + box[3]
    if x0 >= width or y0 >= height or x1 <= 0 or y1 <= 0:
        return None
    tolerance = BOX_OUTSIDE_TOLERANCE
    if (
        x0 >= -tolerance
        and y0 >= -tolerance
        and x1 <= width + tolerance
        and y1 <= height + tolerance
    ):
        return box
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
    return [x0, y0, x1 - x0, y1 - y0]


def is_number(value: Any) -> bool:
    try:
        return type(value) in _NUMBER_TYPES and math.isfinite(value)
    except OverflowError:
        return False


def mask_area(segmentation: Any, height: Any, width: Any) -> float | None:
    """Pixel area of a COCO polygon list or RLE, the way COCO's ``annToRLE`` rasterizes it;
    None when it cannot be decoded."""
    import pycocotools.mask as mask_util

    try:
        if isinstance(segmentation, list):
            rle = mask_util.merge(mask_util.frPyObjects(segmentation, int(height), int(width)))
        elif isinstance(segmentation, dict) and isinstance(segmentation.get("counts"), list):
            rle = mask_util.frPyObjects(segmentation, int(height), int(width))
        else:
            rle = segmentation
        return float(mask_util.area(rle))
    except Exception:  # a malformed mask: the caller falls back to the box
        return None


def compressed_rle(segmentation: Any, where: str) -> dict:
    """A non-polygon mask as compressed COCO RLE, the only dense form detectron2's
    ``transform_instance_annotations`` takes: an uncompressed RLE (``counts`` a list of run
    lengths, as some exports write and as ``load_coco_json`` would have compressed) or an
    ``[H, W]`` array (0 / nonzero) is encoded; a compressed RLE is returned as it is.

    Raises:
        ValueError: naming ``where``, for anything else or a malformed RLE.
    """
    import numpy as np
    import pycocotools.mask as mask_util

    if isinstance(segmentation, np.ndarray):
        if segmentation.ndim != 2:
            raise ValueError(
                f"{where}: expected a mask array of shape [H, W], got shape {segmentation.shape}"
            )
        return mask_util.encode(np.asfortranarray(segmentation != 0, dtype=np.uint8))
    if isinstance(segmentation, dict) and "counts" in segmentation and "size" in segmentation:
        if not isinstance(segmentation["counts"], list):
            return segmentation
        try:
            height, width = (int(side) for side in segmentation["size"])
            return mask_util.frPyObjects(segmentation, height, width)
        except Exception as error:
            raise ValueError(
                f"{where}: cannot read its uncompressed RLE (size {segmentation['size']!r}): "
                f"{error}"
            ) from error
    raise ValueError(
        f"{where}: expected COCO polygons, an RLE dict with 'counts' and 'size', or an [H, W] "
        f"mask array, got {type(segmentation).__name__}"
    )
