"""Geometry of the deformable transformers' multi-scale inputs (Deformable DETR, DINO, ...).

- :func:`get_valid_ratio`: the fraction of a padded feature map covered by the image;
- :func:`get_encoder_reference_points`: the reference point of every encoder position, as
  seen on every level;
- :func:`gen_encoder_output_proposals`: one box proposal per encoder position (two-stage
  models), with invalid positions masked.

Numerics follow detrex step for step. Levels are flattened and concatenated in order, so
``N = sum_l H_l * W_l`` positions; padding is at the bottom and right of each map.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = [
    "PROPOSAL_BASE_SIZE",
    "PROPOSAL_VALID_RANGE",
    "gen_encoder_output_proposals",
    "get_encoder_reference_points",
    "get_valid_ratio",
]

# Proposal width/height at level 0 (normalized); it doubles with every level.
PROPOSAL_BASE_SIZE = 0.05
# Proposals whose coordinates leave (0.01, 0.99) are dropped (their logits would overflow).
PROPOSAL_VALID_RANGE = (0.01, 0.99)


def _level_sizes(spatial_shapes: Tensor | Sequence[Sequence[int]]) -> list[tuple[int, int]]:
    """``[L, 2]`` (H, W) per level, as a tensor or a sequence, -> ``L`` Python ``(H, W)``.

    Symbolic sizes (``torch.SymInt``, from the feature maps' shapes while ``torch.export``
    traces with dynamic image sizes) stay symbolic: ``int()`` would specialize them, and a
    tensor's values are unknown at trace time, so exportable callers pass the shapes.
    """
    if isinstance(spatial_shapes, Tensor):
        spatial_shapes = spatial_shapes.tolist()
    return [(_python_size(height), _python_size(width)) for height, width in spatial_shapes]


def _python_size(size: int | torch.SymInt) -> int | torch.SymInt:
    return size if isinstance(size, torch.SymInt) else int(size)


def get_valid_ratio(mask: Tensor) -> Tensor:
    """Fraction of a padded feature map covered by the image.

    Args:
        mask: ``[B, H, W]`` bool, True on padding (padding is at the bottom and right).

    Returns:
        ``[B, 2]`` float: (valid width / W, valid height / H).
    """
    _, height, width = mask.shape
    valid_height = torch.sum(~mask[:, :, 0], 1)
    valid_width = torch.sum(~mask[:, 0, :], 1)
    return torch.stack([valid_width.float() / width, valid_height.float() / height], -1)


def get_encoder_reference_points(
    spatial_shapes: Tensor | Sequence[Sequence[int]],
    valid_ratios: Tensor,
    device: torch.device | str | None = None,
) -> Tensor:
    """Reference point of every encoder position, as seen on every level.

    The point of pixel ``(i, j)`` of a level is its center ``((j + 0.5) / valid_w,
    (i + 0.5) / valid_h)``, normalized by that level's valid (unpadded) size, then scaled by
    each level's valid ratio to land on the same image location in every padded level.

    Args:
        spatial_shapes: ``[L, 2]`` (H_l, W_l) per level.
        valid_ratios: ``[B, L, 2]`` (w, h) valid fractions, from :func:`get_valid_ratio`.
        device: device of the result; defaults to that of ``valid_ratios``.

    Returns:
        ``[B, N, L, 2]`` normalized (x, y) in the padded-map coordinates of each level, with
        ``N = sum_l H_l * W_l``.
    """
    device = valid_ratios.device if device is None else device
    points = []
    for level, (height, width) in enumerate(_level_sizes(spatial_shapes)):
        # arange + 0.5 equals detrex's linspace(0.5, n - 0.5, n) exactly (a step of 1.0), and
        # its length may be symbolic under torch.export, where linspace's steps specialize.
        center_y, center_x = torch.meshgrid(
            torch.arange(height, dtype=torch.float32, device=device) + 0.5,
            torch.arange(width, dtype=torch.float32, device=device) + 0.5,
            indexing="ij",
        )
        center_y = center_y.reshape(-1)[None] / (valid_ratios[:, None, level, 1] * height)
        center_x = center_x.reshape(-1)[None] / (valid_ratios[:, None, level, 0] * width)
        points.append(torch.stack((center_x, center_y), -1))
    reference_points = torch.cat(points, 1)  # [B, N, 2]
    return reference_points[:, :, None] * valid_ratios[:, None]


def gen_encoder_output_proposals(
    memory: Tensor,
    memory_padding_mask: Tensor,
    spatial_shapes: Tensor | Sequence[Sequence[int]],
) -> tuple[Tensor, Tensor]:
    """One box proposal per encoder position, and the memory with invalid positions zeroed.

    The proposal at pixel ``(i, j)`` of level ``l`` is centered at ``((j + 0.5) / valid_w,
    (i + 0.5) / valid_h)`` (normalized by the valid size of the level) with width and height
    ``PROPOSAL_BASE_SIZE * 2**l``. Proposals on padding, or with any coordinate outside
    ``PROPOSAL_VALID_RANGE``, are invalid: their logit is ``+inf`` and their memory is zeroed.

    Args:
        memory: ``[B, N, C]`` encoder output.
        memory_padding_mask: ``[B, N]`` bool, True on padding.
        spatial_shapes: ``[L, 2]`` (H_l, W_l) per level.

    Returns:
        ``(output_memory, output_proposals)``: ``[B, N, C]`` memory with invalid positions
        set to 0 (before any projection, which the transformer applies) and ``[B, N, 4]``
        proposal logits (``inverse_sigmoid`` of normalized ``cxcywh``, unclamped).
    """
    batch_size = memory.shape[0]
    proposals = []
    start = 0
    for level, (height, width) in enumerate(_level_sizes(spatial_shapes)):
        level_mask = memory_padding_mask[:, start : start + height * width].view(
            batch_size, height, width, 1
        )
        valid_height = torch.sum(~level_mask[:, :, 0, 0], 1)
        valid_width = torch.sum(~level_mask[:, 0, :, 0], 1)
        # arange equals detrex's linspace(0, n - 1, n) exactly; see get_encoder_reference_points.
        grid_y, grid_x = torch.meshgrid(
            torch.arange(height, dtype=torch.float32, device=memory.device),
            torch.arange(width, dtype=torch.float32, device=memory.device),
            indexing="ij",
        )
        grid = torch.cat([grid_x.unsqueeze(-1), grid_y.unsqueeze(-1)], -1)  # [H, W, 2]
        scale = torch.cat([valid_width.unsqueeze(-1), valid_height.unsqueeze(-1)], 1)
        grid = (grid.unsqueeze(0).expand(batch_size, -1, -1, -1) + 0.5) / scale.view(
            batch_size, 1, 1, 2
        )
        size = torch.ones_like(grid) * PROPOSAL_BASE_SIZE * (2.0**level)
        proposals.append(torch.cat((grid, size), -1).view(batch_size, -1, 4))
        start += height * width

    output_proposals = torch.cat(proposals, 1)
    low, high = PROPOSAL_VALID_RANGE
    valid = ((output_proposals > low) & (output_proposals < high)).all(-1, keepdim=True)
    output_proposals = torch.log(output_proposals / (1 - output_proposals))
    output_proposals = output_proposals.masked_fill(memory_padding_mask.unsqueeze(-1), float("inf"))
    output_proposals = output_proposals.masked_fill(~valid, float("inf"))

    output_memory = memory.masked_fill(memory_padding_mask.unsqueeze(-1), 0.0)
    output_memory = output_memory.masked_fill(~valid, 0.0)
    return output_memory, output_proposals
