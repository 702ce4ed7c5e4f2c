"""COCO panoptic PNG colours <-> segment ids (panopticapi's ``id2rgb`` / ``rgb2id``):
``id = R + 256 G + 256^2 B``. Used by the panoptic datasets, the panoptic mapper and the
panoptic evaluator."""

from __future__ import annotations

import numpy as np

__all__ = ["id2rgb", "rgb2id"]


def id2rgb(id_map: np.ndarray) -> np.ndarray:
    """Segment ids as the colours of a COCO panoptic PNG.

    Args:
        id_map: ``[H, W]`` integer array of segment ids in ``[0, 256^3)``.

    Returns:
        ``[H, W, 3]`` uint8 RGB array.
    """
    id_map = np.asarray(id_map)
    if not np.issubdtype(id_map.dtype, np.integer):
        raise TypeError(f"id2rgb: expected an integer array of segment ids, got {id_map.dtype}")
    if id_map.size and (id_map.min() < 0 or id_map.max() >= 256**3):
        raise ValueError(
            f"id2rgb: expected segment ids in [0, {256**3}), got [{id_map.min()}, {id_map.max()}]"
        )
    ids = id_map.astype(np.int64)
    return np.stack([ids % 256, ids // 256 % 256, ids // 256**2], axis=-1).astype(np.uint8)


def rgb2id(color: np.ndarray) -> np.ndarray:
    """COCO panoptic PNG colours uint8 ``[H, W, 3]`` (RGB) as segment ids int64 ``[H, W]``."""
    color = np.asarray(color)
    if color.ndim != 3 or color.shape[-1] != 3:
        raise ValueError(f"rgb2id: expected an [H, W, 3] RGB array, got shape {color.shape}")
    color = color.astype(np.int64)
    return color[..., 0] + 256 * color[..., 1] + 256 * 256 * color[..., 2]
