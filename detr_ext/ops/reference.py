"""The pure-PyTorch multi-scale deformable attention: fallback path and test oracle.

Built on ``torch.nn.functional.grid_sample`` per level, the way Deformable DETR's reference
implementation is written. It needs the level sizes on the host (one device sync on CUDA) and
materializes every sampled value, ``[B*H, C, Q, L*P]``, which is why the compiled op exists.
Non-finite locations and weights follow the rule in ``ms_deform_attn``'s docstring on every
device (grid_sample alone differs there between CPU and CUDA).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["ms_deform_attn_pytorch"]


def ms_deform_attn_pytorch(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """Multi-scale deformable attention with ``grid_sample``.

    Args:
        value: ``[B, N, H, C]``, the flattened feature maps of all levels, level after level.
        spatial_shapes: ``[L, 2]`` integer (height, width) of each level; ``sum(h*w) == N``.
        sampling_locations: ``[B, Q, H, L, P, 2]`` normalized (x, y) in the level's frame
            (0 and 1 are the outer edges of the map; points outside sample zeros).
        attention_weights: ``[B, Q, H, L, P]``.

    Returns:
        ``[B, Q, H*C]`` in the dtype of ``value``. float64 and float32 values are computed in
        their dtype (locations and weights cast to it); float16 and bfloat16 ones in float32,
        as the compiled kernels accumulate (CPU grid_sample in these dtypes is both imprecise
        and, for the strided per-level views taken here, wrong: NaN and ~1e37 values).
    """
    if value.dtype in (torch.float16, torch.bfloat16):
        output = ms_deform_attn_pytorch(
            value.float(), spatial_shapes, sampling_locations.float(), attention_weights.float()
        )
        return output.to(value.dtype)
    batch, _, num_heads, channels = value.shape
    _, num_queries, _, num_levels, num_points, _ = sampling_locations.shape
    sampling_locations = sampling_locations.to(value.dtype)
    attention_weights = attention_weights.to(value.dtype)
    level_sizes = [(int(h), int(w)) for h, w in spatial_shapes.tolist()]
    value_per_level = value.split([h * w for h, w in level_sizes], dim=1)
    # grid_sample's handling of a non-finite grid point differs by device (CPU: NaN, but a zero
    # gradient for the non-finite coordinate; CUDA: zeros at +-inf), so such points are moved
    # where every corner is outside any map (-3 in grid units) and the NaN comes from `poison`.
    finite_points = sampling_locations.isfinite().all(-1, keepdim=True)
    grids = torch.where(finite_points, 2 * sampling_locations - 1, -3.0)
    # [B, Q, H, L, P]: exactly 0 with a zero gradient at finite points, NaN at the others.
    poison = (sampling_locations - sampling_locations).sum(-1)
    # +-inf weights count as NaN (w - w is NaN there and exactly 0 elsewhere; d/dw stays 1).
    attention_weights = attention_weights + (attention_weights - attention_weights)
    sampled_per_level = []
    for level, (height, width) in enumerate(level_sizes):
        # [B, h*w, H, C] -> [B*H, C, h, w]
        value_level = (
            value_per_level[level]
            .flatten(2)
            .transpose(1, 2)
            .reshape(batch * num_heads, channels, height, width)
        )
        # [B, Q, H, P, 2] -> [B*H, Q, P, 2]
        grid_level = grids[:, :, :, level].transpose(1, 2).flatten(0, 1)
        sampled_per_level.append(
            F.grid_sample(
                value_level, grid_level, mode="bilinear", padding_mode="zeros", align_corners=False
            )
        )  # [B*H, C, Q, P]
    # [B, Q, H, L, P] -> [B*H, 1, Q, L*P]
    weights, poison = (
        t.transpose(1, 2).reshape(batch * num_heads, 1, num_queries, num_levels * num_points)
        for t in (attention_weights, poison)
    )
    output = (torch.stack(sampled_per_level, dim=-2).flatten(-2) * weights).sum(-1)
    # Adds exact zeros (forward and backward) for finite points; a non-finite point makes its
    # output row, its weight gradient and both its location gradients NaN (poison**2: the
    # gradient through poison must be NaN too, not weight * grad_output).
    output = output + (poison * poison * weights).sum(-1)
    return output.view(batch, num_heads * channels, num_queries).transpose(1, 2).contiguous()
