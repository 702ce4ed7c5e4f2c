"""Positional embeddings for feature maps and for box / point coordinates.

``PositionEmbeddingSine`` and ``PositionEmbeddingLearned`` embed the pixels of a padded
feature map (DETR, Deformable DETR, DINO); ``get_sine_pos_embed`` embeds normalized
coordinates such as reference points and anchor boxes (DAB-DETR, DINO).
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["PositionEmbeddingLearned", "PositionEmbeddingSine", "get_sine_pos_embed"]


def _check_mask(mask: torch.Tensor, where: str) -> None:
    if not isinstance(mask, torch.Tensor) or mask.dim() != 3 or mask.dtype != torch.bool:
        got = (
            f"shape {tuple(mask.shape)}, dtype {mask.dtype}"
            if isinstance(mask, torch.Tensor)
            else type(mask).__name__
        )
        raise ValueError(f"{where}: expected a bool mask of shape [B, H, W], got {got}")


def _frequencies(num_pos_feats: int, temperature: float, device: torch.device) -> torch.Tensor:
    """Per-channel wavelengths ``temperature ** (2 * (i // 2) / num_pos_feats)``: [F]."""
    dim_t = torch.arange(num_pos_feats, dtype=torch.float32, device=device)
    return temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_pos_feats)


def _interleave_sin_cos(angles: torch.Tensor) -> torch.Tensor:
    """``[..., F]`` angles -> ``[..., F]`` with sin of even channels, cos of odd, interleaved."""
    return torch.stack((angles[..., 0::2].sin(), angles[..., 1::2].cos()), dim=-1).flatten(-2)


class PositionEmbeddingSine(nn.Module):
    """Fixed sine / cosine embedding of the (y, x) position of each unpadded pixel.

    Positions count valid pixels along each axis (a cumulative sum over the not-padded
    mask), so padding does not shift the embedding of the image content.

    Args:
        num_pos_feats: channels per axis; the output has ``2 * num_pos_feats`` channels.
            Must be even.
        temperature: base of the wavelength progression.
        normalize: if True, map positions to ``(pos + offset) / (last_pos + eps) * scale``.
        scale: range of normalized positions.
        eps: keeps the normalization finite for fully padded rows / columns.
        offset: added to positions before normalizing (-0.5 in Deformable DETR / DINO).
    """

    def __init__(
        self,
        num_pos_feats: int = 64,
        temperature: float = 10000,
        normalize: bool = False,
        scale: float = 2 * math.pi,
        eps: float = 1e-6,
        offset: float = 0.0,
    ) -> None:
        super().__init__()
        if num_pos_feats <= 0 or num_pos_feats % 2 != 0:
            raise ValueError(
                "PositionEmbeddingSine: expected a positive even num_pos_feats, "
                f"got {num_pos_feats}"
            )
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature
        self.normalize = normalize
        self.scale = scale
        self.eps = eps
        self.offset = offset

    def forward(self, mask: torch.Tensor, **kwargs) -> torch.Tensor:
        """Embed every pixel position.

        Args:
            mask: ``[B, H, W]`` bool, True marks padding.
            **kwargs: ignored (call-compatibility with other embeddings).

        Returns:
            ``[B, 2 * num_pos_feats, H, W]`` float32: y channels first, then x channels.
        """
        _check_mask(mask, "PositionEmbeddingSine")
        not_mask = ~mask
        y_embed = not_mask.cumsum(1, dtype=torch.float32)
        x_embed = not_mask.cumsum(2, dtype=torch.float32)
        if self.normalize:
            y_embed = (y_embed + self.offset) / (y_embed[:, -1:, :] + self.eps) * self.scale
            x_embed = (x_embed + self.offset) / (x_embed[:, :, -1:] + self.eps) * self.scale

        dim_t = _frequencies(self.num_pos_feats, self.temperature, mask.device)
        pos_x = _interleave_sin_cos(x_embed[:, :, :, None] / dim_t)
        pos_y = _interleave_sin_cos(y_embed[:, :, :, None] / dim_t)
        return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)

    def extra_repr(self) -> str:
        return (
            f"num_pos_feats={self.num_pos_feats}, temperature={self.temperature}, "
            f"normalize={self.normalize}, scale={self.scale}, eps={self.eps}, "
            f"offset={self.offset}"
        )


class PositionEmbeddingLearned(nn.Module):
    """Learned absolute embedding: one table for columns, one for rows.

    Args:
        num_embeddings: largest supported height and width.
        num_pos_feats: channels per axis; the output has ``2 * num_pos_feats`` channels.
    """

    def __init__(self, num_embeddings: int = 50, num_pos_feats: int = 256) -> None:
        super().__init__()
        self.num_embeddings = num_embeddings
        self.num_pos_feats = num_pos_feats
        self.row_embed = nn.Embedding(num_embeddings, num_pos_feats)
        self.col_embed = nn.Embedding(num_embeddings, num_pos_feats)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.uniform_(self.row_embed.weight)
        nn.init.uniform_(self.col_embed.weight)

    def forward(self, mask: torch.Tensor, **kwargs) -> torch.Tensor:
        """Embed every pixel position (padding is ignored: positions are absolute).

        Args:
            mask: ``[B, H, W]`` bool; only its shape and device are used.
            **kwargs: ignored (call-compatibility with other embeddings).

        Returns:
            ``[B, 2 * num_pos_feats, H, W]``: x (column) channels first, then y (row).
        """
        _check_mask(mask, "PositionEmbeddingLearned")
        batch, height, width = mask.shape
        if height > self.num_embeddings or width > self.num_embeddings:
            raise ValueError(
                f"PositionEmbeddingLearned: expected H, W <= num_embeddings="
                f"{self.num_embeddings}, got H={height}, W={width}"
            )
        x_emb = self.col_embed(torch.arange(width, device=mask.device))
        y_emb = self.row_embed(torch.arange(height, device=mask.device))
        pos = torch.cat(
            [
                x_emb.unsqueeze(0).repeat(height, 1, 1),
                y_emb.unsqueeze(1).repeat(1, width, 1),
            ],
            dim=-1,
        )
        return pos.permute(2, 0, 1).unsqueeze(0).repeat(batch, 1, 1, 1)


def get_sine_pos_embed(
    pos_tensor: torch.Tensor,
    num_pos_feats: int = 128,
    temperature: float = 10000,
    exchange_xy: bool = True,
) -> torch.Tensor:
    """Sine / cosine embedding of each coordinate of normalized points or boxes.

    Each coordinate ``v`` gives ``num_pos_feats`` channels: ``v * 2 pi / dim_t`` with sin on
    even and cos on odd channels, interleaved. The per-coordinate embeddings are concatenated
    in coordinate order, except that ``exchange_xy`` swaps the first two (so ``(x, y, ...)``
    gives ``[emb(y), emb(x), ...]``).

    Args:
        pos_tensor: ``[..., n]`` coordinates in [0, 1], e.g. ``(cx, cy)`` or
            ``(cx, cy, w, h)``.
        num_pos_feats: channels per coordinate, even.
        temperature: base of the wavelength progression.
        exchange_xy: swap the embeddings of the first two coordinates.

    Returns:
        ``[..., n * num_pos_feats]``.
    """
    if not isinstance(pos_tensor, torch.Tensor) or pos_tensor.dim() < 1:
        raise ValueError(
            "get_sine_pos_embed: expected a tensor of shape [..., n], got "
            f"{getattr(pos_tensor, 'shape', type(pos_tensor).__name__)}"
        )
    if num_pos_feats <= 0 or num_pos_feats % 2 != 0:
        raise ValueError(
            f"get_sine_pos_embed: expected a positive even num_pos_feats, got {num_pos_feats}"
        )
    num_coords = pos_tensor.shape[-1]
    if exchange_xy and num_coords < 2:
        raise ValueError(
            "get_sine_pos_embed: exchange_xy needs at least 2 coordinates in the last dim, "
            f"got shape {tuple(pos_tensor.shape)}"
        )
    scale = 2 * math.pi
    dim_t = _frequencies(num_pos_feats, temperature, pos_tensor.device)
    embeds = [
        _interleave_sin_cos(coord * scale / dim_t)
        for coord in pos_tensor.split([1] * num_coords, dim=-1)
    ]
    if exchange_xy:
        embeds[0], embeds[1] = embeds[1], embeds[0]
    return torch.cat(embeds, dim=-1)
