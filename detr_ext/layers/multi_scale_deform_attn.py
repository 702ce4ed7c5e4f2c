"""Multi-scale deformable attention as an ``nn.Module`` (Deformable DETR, Zhu et al. 2021).

Parameter names (``sampling_offsets``, ``attention_weights``, ``value_proj``, ``output_proj``),
initialisation and the residual/``query_pos`` conventions follow detrex's module, so detrex
checkpoints load unchanged and give the same outputs. The sampling itself runs on
:func:`detr_ext.ops.ms_deform_attn` (the compiled kernel, or the PyTorch path as fallback).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from detr_ext.ops import ms_deform_attn

__all__ = ["MultiScaleDeformableAttention"]


class MultiScaleDeformableAttention(nn.Module):
    """Each query attends to ``num_points`` learned sampling points per head and level.

    Args:
        embed_dim: model width; must be divisible by ``num_heads``.
        num_heads: attention heads.
        num_levels: feature levels of the value.
        num_points: sampling points per head and level.
        dropout: dropout on the output before the residual is added.
        batch_first: tensors are ``[B, Q, C]`` when True (default), ``[Q, B, C]`` otherwise.
        backend: MSDA backend ("auto", "compiled", "pytorch"); None reads the
            ``DETR_EXT_MSDA_BACKEND`` environment variable.
    """

    def __init__(
        self,
        embed_dim: int = 256,
        num_heads: int = 8,
        num_levels: int = 4,
        num_points: int = 4,
        dropout: float = 0.0,
        batch_first: bool = True,
        backend: str | None = None,
    ) -> None:
        super().__init__()
        if embed_dim % num_heads != 0:
            raise ValueError(
                f"MultiScaleDeformableAttention: embed_dim must be divisible by num_heads, got "
                f"embed_dim={embed_dim} and num_heads={num_heads}"
            )
        for name, count in (("num_levels", num_levels), ("num_points", num_points)):
            if count < 1:
                raise ValueError(f"MultiScaleDeformableAttention: {name} must be >= 1, got {count}")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.num_levels = num_levels
        self.num_points = num_points
        self.batch_first = batch_first
        self.backend = backend
        self.dropout = nn.Dropout(dropout)
        self.sampling_offsets = nn.Linear(embed_dim, num_heads * num_levels * num_points * 2)
        self.attention_weights = nn.Linear(embed_dim, num_heads * num_levels * num_points)
        self.value_proj = nn.Linear(embed_dim, embed_dim)
        self.output_proj = nn.Linear(embed_dim, embed_dim)
        self.init_weights()

    def init_weights(self) -> None:
        """Deformable DETR's initialisation.

        Offsets start as a ring: head ``h`` looks in direction ``2*pi*h/num_heads`` (scaled so
        the larger coordinate is 1), point ``p`` at distance ``p + 1``; attention weights start
        uniform; the projections are Xavier-uniform with zero bias.
        """
        nn.init.constant_(self.sampling_offsets.weight, 0.0)
        thetas = torch.arange(self.num_heads, dtype=torch.float32) * (
            2.0 * math.pi / self.num_heads
        )
        directions = torch.stack([thetas.cos(), thetas.sin()], -1)
        directions = directions / directions.abs().max(-1, keepdim=True)[0]
        grid = directions.view(self.num_heads, 1, 1, 2).repeat(
            1, self.num_levels, self.num_points, 1
        )
        for point in range(self.num_points):
            grid[:, :, point, :] *= point + 1
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.view(-1))
        nn.init.constant_(self.attention_weights.weight, 0.0)
        nn.init.constant_(self.attention_weights.bias, 0.0)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.constant_(self.value_proj.bias, 0.0)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.constant_(self.output_proj.bias, 0.0)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor | None = None,
        value: torch.Tensor | None = None,
        identity: torch.Tensor | None = None,
        query_pos: torch.Tensor | None = None,
        key_padding_mask: torch.Tensor | None = None,
        reference_points: torch.Tensor | None = None,
        spatial_shapes: torch.Tensor | None = None,
        level_start_index: torch.Tensor | None = None,
        **kwargs,
    ) -> torch.Tensor:
        """Attends from ``query`` to the multi-scale ``value``.

        Args:
            query: ``[B, Q, D]`` (``[Q, B, D]`` if not batch_first).
            key: unused (the keys are the sampling points); kept for the common attention
                signature of transformer layers.
            value: ``[B, N, D]`` flattened levels; defaults to ``query`` (encoder self-attention).
            identity: residual added to the output; defaults to ``query`` before ``query_pos``.
            query_pos: positional embedding added to ``query`` before predicting offsets and
                weights.
            key_padding_mask: ``[B, N]`` bool, True where the value is padding (zeroed).
            reference_points: ``[B, Q, L, 2]`` normalized (x, y) points, or ``[B, Q, L, 4]``
                normalized (cx, cy, w, h) boxes whose size scales the offsets.
            spatial_shapes: ``[L, 2]`` (height, width) per level.
            level_start_index: ``[L]`` offset of each level in N.

        Returns:
            ``identity + dropout(output_proj(attention))``, shaped like ``query``.
        """
        if reference_points is None or spatial_shapes is None or level_start_index is None:
            raise ValueError(
                "MultiScaleDeformableAttention needs reference_points, spatial_shapes and "
                "level_start_index, got None for "
                + ", ".join(
                    name
                    for name, tensor in (
                        ("reference_points", reference_points),
                        ("spatial_shapes", spatial_shapes),
                        ("level_start_index", level_start_index),
                    )
                    if tensor is None
                )
            )
        if value is None:
            value = query
        if identity is None:
            identity = query
        if query_pos is not None:
            query = query + query_pos
        if not self.batch_first:
            query = query.transpose(0, 1)
            value = value.transpose(0, 1)
        if query.dim() != 3 or query.shape[-1] != self.embed_dim:
            raise ValueError(
                f"MultiScaleDeformableAttention: expected query of shape [B, Q, {self.embed_dim}], "
                f"got {list(query.shape)}"
            )
        batch, num_queries, _ = query.shape
        num_values = value.shape[1]
        if value.dim() != 3 or value.shape[0] != batch or value.shape[-1] != self.embed_dim:
            raise ValueError(
                f"MultiScaleDeformableAttention: expected value of shape [{batch}, N, "
                f"{self.embed_dim}], got {list(value.shape)}"
            )
        if spatial_shapes.shape != (self.num_levels, 2):
            raise ValueError(
                f"MultiScaleDeformableAttention: expected spatial_shapes of shape "
                f"[{self.num_levels}, 2], got {list(spatial_shapes.shape)}"
            )
        if reference_points.shape[:3] != (batch, num_queries, self.num_levels) or (
            reference_points.shape[-1] not in (2, 4) or reference_points.dim() != 4
        ):
            raise ValueError(
                f"MultiScaleDeformableAttention: expected reference_points of shape "
                f"[{batch}, {num_queries}, {self.num_levels}, 2 or 4], "
                f"got {list(reference_points.shape)}"
            )

        value = self.value_proj(value)
        if key_padding_mask is not None:
            if key_padding_mask.shape != (batch, num_values):
                raise ValueError(
                    f"MultiScaleDeformableAttention: expected key_padding_mask of shape "
                    f"[{batch}, {num_values}], got {list(key_padding_mask.shape)}"
                )
            value = value.masked_fill(key_padding_mask[..., None], 0.0)
        value = value.view(batch, num_values, self.num_heads, -1)

        heads, levels, points = self.num_heads, self.num_levels, self.num_points
        offsets = self.sampling_offsets(query).view(batch, num_queries, heads, levels, points, 2)
        weights = self.attention_weights(query).view(batch, num_queries, heads, levels * points)
        weights = weights.softmax(-1).view(batch, num_queries, heads, levels, points)

        if reference_points.shape[-1] == 2:
            # Offsets are in pixels of each level: normalize by (width, height).
            normalizer = torch.stack([spatial_shapes[..., 1], spatial_shapes[..., 0]], -1)
            locations = (
                reference_points[:, :, None, :, None, :]
                + offsets / normalizer[None, None, None, :, None, :]
            )
        else:
            # Offsets are fractions of the reference box's half size, spread over the points.
            locations = (
                reference_points[:, :, None, :, None, :2]
                + offsets / points * reference_points[:, :, None, :, None, 2:] * 0.5
            )

        output = ms_deform_attn(
            value, spatial_shapes, level_start_index, locations, weights, backend=self.backend
        )
        output = self.output_proj(output)
        if not self.batch_first:
            output = output.transpose(0, 1)
        return identity + self.dropout(output)

    def extra_repr(self) -> str:
        return (
            f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, "
            f"num_levels={self.num_levels}, num_points={self.num_points}"
        )
