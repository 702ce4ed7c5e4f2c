"""Padding masks carried from the padded input batch to the feature maps."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["resize_padding_mask"]


def _nearest_source_index(input_size: int, output_size: int, device: torch.device) -> Tensor:
    # PyTorch's nearest rule (ATen UpSample.h, CPU and CUDA): floorf(i * (float)in / out),
    # in float32, capped at in - 1.
    scale = torch.full((), input_size, dtype=torch.float32, device=device) / output_size
    index = torch.floor(torch.arange(output_size, dtype=torch.float32, device=device) * scale)
    return index.long().clamp(max=input_size - 1)


def resize_padding_mask(padding_mask: Tensor, size: Sequence[int]) -> Tensor:
    """A padding mask resized to a feature map by nearest neighbour.

    Picks the same pixels as ``F.interpolate(mask[None].float(), size)[0].bool()`` (DETR's and
    detrex's way), with the index arithmetic written out: exported graphs (ONNX ``Resize``,
    compilers) may round ``i * in / out`` differently at exact integers, which moves the mask
    edge by a pixel and changes the detections of padded images.

    Args:
        padding_mask: ``[B, H, W]`` bool, True on padding.
        size: ``(h, w)`` of the feature map.

    Returns:
        ``[B, h, w]`` bool.
    """
    _, height, width = padding_mask.shape
    rows = _nearest_source_index(height, size[0], padding_mask.device)
    columns = _nearest_source_index(width, size[1], padding_mask.device)
    return padding_mask[:, rows][:, :, columns]
