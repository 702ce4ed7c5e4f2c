"""DETR-segm mask logits, predicted in the padded batch frame at stride 4, resized to an image's
original size: cropped to the image first, then resized, a bounded number of queries at once.
Used by :class:`~detr_ext.modeling.meta_arch.detr_segm_base.DETRSegmDetectorBase` at inference.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "logits_and_masks_at_output_size",
    "mask_logits_at_output_size",
    "masks_at_output_size",
]

# Queries upsampled at once: bounds the float32 buffers to MASK_CHUNK x (padded input) +
# MASK_CHUNK x (original size) per image, besides the logits asked for at the original size
# (the panoptic queries' ones, which combine_panoptic needs).
MASK_CHUNK = 16


def mask_logits_at_output_size(
    mask_logits: Tensor,
    padded_size: tuple[int, int],
    image_size: tuple[int, int],
    output_size: tuple[int, int],
) -> Tensor:
    """Mask logits from the padded feature frame to the original image.

    Args:
        mask_logits: ``[N, H_2, W_2]`` in the padded batch frame.
        padded_size: ``(H, W)`` of the padded network input.
        image_size: ``(h, w)`` of this image in the network input (before padding).
        output_size: ``(height, width)`` of the original image.

    Returns:
        ``[N, height, width]`` float32 logits (bilinear, twice: to the padded input, then,
        after cropping the padding away, to the output size).
    """
    if mask_logits.shape[0] == 0:
        return mask_logits.new_zeros((0, *output_size), dtype=torch.float32)
    logits = F.interpolate(
        mask_logits[:, None].float(), size=padded_size, mode="bilinear", align_corners=False
    )
    logits = logits[:, :, : image_size[0], : image_size[1]]
    logits = F.interpolate(logits, size=output_size, mode="bilinear", align_corners=False)
    return logits[:, 0]


def logits_and_masks_at_output_size(
    mask_logits: Tensor,
    logit_queries: Tensor,
    mask_queries: Tensor,
    padded_size: tuple[int, int],
    image_size: tuple[int, int],
    output_size: tuple[int, int],
    *,
    mask_threshold: float,
) -> tuple[Tensor, Tensor]:
    """``(logits [N_l, height, width] float32, masks [N_m, height, width] bool)`` at the
    original size: the logits of the queries ``logit_queries`` (``[N_l]`` int64, distinct
    indices into ``mask_logits [Q, H_2, W_2]``) and the masks (``sigmoid > mask_threshold``) of
    ``mask_queries`` (``[N_m]``, likewise), in their order. The sets may overlap: each query of
    either is resized once (:func:`mask_logits_at_output_size`, same frame arguments),
    ``MASK_CHUNK`` queries at a time."""
    device = mask_logits.device
    # Per query, its row in the logits (0) and in the masks (1) returned; -1 for none.
    rows = torch.full((2, mask_logits.shape[0]), -1, dtype=torch.int64, device=device)
    for output_rows, queries in zip(rows, (logit_queries, mask_queries), strict=True):
        output_rows[queries] = torch.arange(len(queries), device=device)
    if int((rows >= 0).sum()) != len(logit_queries) + len(mask_queries):
        raise ValueError(
            "logits_and_masks_at_output_size: expected distinct indices in logit_queries and in "
            f"mask_queries, got {logit_queries.tolist()} and {mask_queries.tolist()}"
        )
    logit_rows, mask_rows = rows
    logits_out = torch.empty((len(logit_queries), *output_size), dtype=torch.float32, device=device)
    masks_out = torch.zeros((len(mask_queries), *output_size), dtype=torch.bool, device=device)
    queries = torch.nonzero((rows >= 0).any(0))[:, 0]
    for start in range(0, len(queries), MASK_CHUNK):
        chunk = queries[start : start + MASK_CHUNK]
        logits = mask_logits_at_output_size(
            mask_logits[chunk], padded_size, image_size, output_size
        )
        to_logits, to_masks = logit_rows[chunk] >= 0, mask_rows[chunk] >= 0
        logits_out[logit_rows[chunk][to_logits]] = logits[to_logits]
        masks_out[mask_rows[chunk][to_masks]] = logits[to_masks].sigmoid() > mask_threshold
    return logits_out, masks_out


def masks_at_output_size(
    mask_logits: Tensor,
    padded_size: tuple[int, int],
    image_size: tuple[int, int],
    output_size: tuple[int, int],
    *,
    mask_threshold: float,
) -> Tensor:
    """``[N, height, width]`` bool masks of all ``N`` queries of ``mask_logits``:
    :func:`logits_and_masks_at_output_size` without logits."""
    all_queries = torch.arange(mask_logits.shape[0], device=mask_logits.device)
    return logits_and_masks_at_output_size(
        mask_logits,
        all_queries[:0],
        all_queries,
        padded_size,
        image_size,
        output_size,
        mask_threshold=mask_threshold,
    )[1]
