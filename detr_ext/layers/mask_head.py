"""DETR's segmentation head ("DETRsegm", Carion et al., 2020): per-query attention maps over
the encoder memory, turned into mask logits by a small FPN-like convolutional decoder.

- :class:`MHAttentionMap`: for every decoder query, multi-head attention weights over the
  encoder memory (no values), one map per head;
- :class:`MaskHeadSmallConv`: concatenates the projected backbone feature with those maps and
  upsamples them with three finer backbone levels into one mask logit map per query.

Parameter names and shapes are those of facebookresearch/detr (``bbox_attention.q_linear``,
``mask_head.lay1`` ... ``mask_head.adapter3``), so its panoptic checkpoints load after a
rename of the prefixes only.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["MHAttentionMap", "MaskHeadSmallConv"]

# GroupNorm(8, C) of DETR's mask head: every conv output must split into 8 groups.
_NUM_GROUPS = 8


class MHAttentionMap(nn.Module):
    """Multi-head attention weights of queries over a 2D memory (softmax only, no values).

    ``weights[b, q, n, y, x]`` is query ``q``'s attention to memory position ``(y, x)`` in head
    ``n``. As in DETR, the softmax runs jointly over ``(heads, h, w)``, so each query's weights
    sum to 1 over all heads and positions together (not per head). Padded positions get zero
    weight. The softmax is computed in float32 and returned in the dtype of the attention
    logits (e.g. bfloat16 under autocast; float64 inputs stay float64).

    Args:
        query_dim: channels of the queries and of the memory.
        hidden_dim: channels of the projected queries / keys; a multiple of ``num_heads``.
        num_heads: number of attention heads (maps per query).
        dropout: dropout on the attention weights.
        bias: whether the projections have biases.
    """

    def __init__(
        self,
        query_dim: int,
        hidden_dim: int,
        num_heads: int,
        dropout: float = 0.0,
        bias: bool = True,
    ) -> None:
        super().__init__()
        if query_dim <= 0 or hidden_dim <= 0 or num_heads <= 0:
            raise ValueError(
                "MHAttentionMap: expected positive query_dim, hidden_dim and num_heads, got "
                f"{query_dim}, {hidden_dim} and {num_heads}"
            )
        if hidden_dim % num_heads != 0:
            raise ValueError(
                f"MHAttentionMap: expected hidden_dim divisible by num_heads, got hidden_dim="
                f"{hidden_dim} and num_heads={num_heads}"
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"MHAttentionMap: expected dropout in [0, 1), got {dropout}")
        self.query_dim = query_dim
        self.hidden_dim = hidden_dim
        self.num_heads = num_heads
        self.dropout = nn.Dropout(dropout)
        self.q_linear = nn.Linear(query_dim, hidden_dim, bias=bias)
        self.k_linear = nn.Linear(query_dim, hidden_dim, bias=bias)
        self.scale = float(hidden_dim // num_heads) ** -0.5
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """DETR's initialization: xavier-uniform weights, zero biases."""
        for linear in (self.q_linear, self.k_linear):
            nn.init.xavier_uniform_(linear.weight)
            if linear.bias is not None:
                nn.init.zeros_(linear.bias)

    def forward(self, q: Tensor, k: Tensor, mask: Tensor | None = None) -> Tensor:
        """Attention maps of the queries over the memory.

        Args:
            q: ``[B, Q, query_dim]`` queries (e.g. the last decoder layer's output).
            k: ``[B, query_dim, h, w]`` memory (e.g. the encoder output as a feature map).
            mask: ``[B, h, w]`` bool, True at padded positions, or None (no padding).

        Returns:
            ``[B, Q, num_heads, h, w]`` attention weights; per query they sum to 1 over
            ``(num_heads, h, w)``.
        """
        self._check_inputs(q, k, mask)
        batch_size, num_queries, _ = q.shape
        height, width = k.shape[-2:]
        head_dim = self.hidden_dim // self.num_heads

        q = self.q_linear(q)
        # The key projection as a 1x1 convolution keeps the memory in [B, C, h, w] layout.
        k = F.conv2d(k, self.k_linear.weight[:, :, None, None], self.k_linear.bias)
        q_heads = q.view(batch_size, num_queries, self.num_heads, head_dim)
        k_heads = k.view(batch_size, self.num_heads, head_dim, height, width)
        weights = torch.einsum("bqnc,bnchw->bqnhw", q_heads * self.scale, k_heads)

        if mask is not None:
            # The dtype's lowest finite value rather than -inf: the masked positions still get
            # exactly 0 after the softmax, and a fully padded map gives uniform weights, not NaN.
            weights = weights.masked_fill(mask[:, None, None], torch.finfo(weights.dtype).min)
        # Softmax over (heads, h, w) jointly, in at least float32 (float64 stays float64).
        softmax_dtype = torch.promote_types(weights.dtype, torch.float32)
        probabilities = F.softmax(weights.flatten(2), dim=-1, dtype=softmax_dtype)
        weights = probabilities.to(weights.dtype).view(weights.shape)
        return self.dropout(weights)

    def _check_inputs(self, q: Tensor, k: Tensor, mask: Tensor | None) -> None:
        if q.dim() != 3 or q.shape[-1] != self.query_dim:
            raise ValueError(
                f"MHAttentionMap: expected q of shape [B, Q, {self.query_dim}], got "
                f"{tuple(q.shape)}"
            )
        if k.dim() != 4 or k.shape[0] != q.shape[0] or k.shape[1] != self.query_dim:
            raise ValueError(
                f"MHAttentionMap: expected k of shape [B={q.shape[0]}, {self.query_dim}, h, w], "
                f"got {tuple(k.shape)}"
            )
        if mask is None:
            return
        expected = (k.shape[0], *k.shape[-2:])
        if tuple(mask.shape) != expected or mask.dtype != torch.bool:
            raise ValueError(
                f"MHAttentionMap: expected a bool mask of shape [B, h, w] = {expected}, got "
                f"{mask.dtype} {tuple(mask.shape)}"
            )

    def extra_repr(self) -> str:
        return (
            f"query_dim={self.query_dim}, hidden_dim={self.hidden_dim}, num_heads={self.num_heads}"
        )


class MaskHeadSmallConv(nn.Module):
    """DETR's FPN-like mask decoder: one mask logit map per query at the finest FPN level.

    The projected backbone feature ``x`` (coarsest level) is concatenated with each query's
    attention maps, refined by two 3x3 conv + GroupNorm + ReLU blocks, then upsampled three
    times (nearest) onto the FPN levels, each added to a 1x1 adapter of that level and refined
    by another block; a final 3x3 conv gives one channel. Channels go ``dim -> context_dim/2
    -> /4 -> /8 -> /16 -> 1`` as in DETR.

    Args:
        dim: channels of ``cat(x, attention maps)``, i.e. ``C + num_heads`` (DETR: 256 + 8).
        fpn_dims: channels of the three FPN levels, coarse to fine (DETR's ResNet-50:
            ``(1024, 512, 256)``, i.e. res4, res3, res2).
        context_dim: the transformer's hidden size (DETR: 256); sets the inner widths.

    Every convolution feeds a ``GroupNorm(8, C)``, so ``dim`` and ``context_dim // 16`` (hence
    ``context_dim``'s halvings) must be multiples of 8: ``dim % 8 == 0`` and
    ``context_dim % 128 == 0``.
    """

    def __init__(self, dim: int, fpn_dims: Sequence[int], context_dim: int) -> None:
        super().__init__()
        fpn_dims = tuple(int(channels) for channels in fpn_dims)
        if len(fpn_dims) != 3 or min(fpn_dims) <= 0:
            raise ValueError(
                f"MaskHeadSmallConv: expected 3 positive fpn_dims (coarse to fine), got {fpn_dims}"
            )
        if dim <= 0 or dim % _NUM_GROUPS != 0:
            raise ValueError(
                f"MaskHeadSmallConv: GroupNorm({_NUM_GROUPS}, dim) needs dim to be a positive "
                f"multiple of {_NUM_GROUPS}, got dim={dim}"
            )
        if context_dim <= 0 or context_dim % (16 * _NUM_GROUPS) != 0:
            raise ValueError(
                f"MaskHeadSmallConv: the inner widths context_dim // 2, // 4, // 8, // 16 feed "
                f"GroupNorm({_NUM_GROUPS}, C), so context_dim must be a positive multiple of "
                f"{16 * _NUM_GROUPS}, got context_dim={context_dim}"
            )
        self.dim = dim
        self.fpn_dims = fpn_dims
        self.context_dim = context_dim
        inter_dims = [dim] + [context_dim // factor for factor in (2, 4, 8, 16)]
        self.inter_dims = tuple(inter_dims)

        self.lay1 = nn.Conv2d(dim, dim, 3, padding=1)
        self.gn1 = nn.GroupNorm(_NUM_GROUPS, dim)
        self.lay2 = nn.Conv2d(dim, inter_dims[1], 3, padding=1)
        self.gn2 = nn.GroupNorm(_NUM_GROUPS, inter_dims[1])
        self.lay3 = nn.Conv2d(inter_dims[1], inter_dims[2], 3, padding=1)
        self.gn3 = nn.GroupNorm(_NUM_GROUPS, inter_dims[2])
        self.lay4 = nn.Conv2d(inter_dims[2], inter_dims[3], 3, padding=1)
        self.gn4 = nn.GroupNorm(_NUM_GROUPS, inter_dims[3])
        self.lay5 = nn.Conv2d(inter_dims[3], inter_dims[4], 3, padding=1)
        self.gn5 = nn.GroupNorm(_NUM_GROUPS, inter_dims[4])
        self.out_lay = nn.Conv2d(inter_dims[4], 1, 3, padding=1)
        self.adapter1 = nn.Conv2d(fpn_dims[0], inter_dims[1], 1)
        self.adapter2 = nn.Conv2d(fpn_dims[1], inter_dims[2], 1)
        self.adapter3 = nn.Conv2d(fpn_dims[2], inter_dims[3], 1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """DETR's initialization: kaiming-uniform (a=1) conv weights, zero conv biases."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_uniform_(module.weight, a=1)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.GroupNorm):
                module.reset_parameters()

    def forward(self, x: Tensor, bbox_mask: Tensor, fpns: Sequence[Tensor]) -> Tensor:
        """Mask logits of every query.

        Args:
            x: ``[B, C, h, w]`` projected backbone feature, ``C = dim - num_heads``.
            bbox_mask: ``[B, Q, num_heads, h, w]`` attention maps (:class:`MHAttentionMap`).
            fpns: three backbone features ``[B, fpn_dims[i], H_i, W_i]``, coarse to fine; any
                sizes (each stage is upsampled to the next level's size).

        Returns:
            ``[B, Q, H_2, W_2]`` mask logits at the finest level's resolution.
        """
        self._check_inputs(x, bbox_mask, fpns)
        batch_size, num_queries = bbox_mask.shape[:2]
        # One copy of the image feature per query, batch-major like bbox_mask.flatten(0, 1).
        per_query = x[:, None].expand(-1, num_queries, -1, -1, -1).flatten(0, 1)
        out = torch.cat([per_query, bbox_mask.flatten(0, 1)], dim=1)  # [B * Q, dim, h, w]
        out = F.relu(self.gn1(self.lay1(out)))
        out = F.relu(self.gn2(self.lay2(out)))

        stages = (
            (self.adapter1, self.lay3, self.gn3),
            (self.adapter2, self.lay4, self.gn4),
            (self.adapter3, self.lay5, self.gn5),
        )
        for fpn, (adapter, conv, norm) in zip(fpns, stages, strict=True):
            level = adapter(fpn)  # [B, C_i, H_i, W_i]
            out = F.interpolate(out, size=level.shape[-2:], mode="nearest")
            # Broadcasting over the queries instead of repeating the level Q times.
            out = (out.unflatten(0, (batch_size, num_queries)) + level[:, None]).flatten(0, 1)
            out = F.relu(norm(conv(out)))

        out = self.out_lay(out)  # [B * Q, 1, H_2, W_2]
        return out.view(batch_size, num_queries, *out.shape[-2:])

    def _check_inputs(self, x: Tensor, bbox_mask: Tensor, fpns: Sequence[Tensor]) -> None:
        if x.dim() != 4 or bbox_mask.dim() != 5:
            raise ValueError(
                "MaskHeadSmallConv: expected x [B, C, h, w] and bbox_mask [B, Q, num_heads, h, "
                f"w], got {tuple(x.shape)} and {tuple(bbox_mask.shape)}"
            )
        if x.shape[0] != bbox_mask.shape[0] or x.shape[-2:] != bbox_mask.shape[-2:]:
            raise ValueError(
                "MaskHeadSmallConv: expected x and bbox_mask with the same batch size and map "
                f"size, got x {tuple(x.shape)} and bbox_mask {tuple(bbox_mask.shape)}"
            )
        if x.shape[1] + bbox_mask.shape[2] != self.dim:
            raise ValueError(
                f"MaskHeadSmallConv: expected x channels + attention heads = dim = {self.dim}, "
                f"got {x.shape[1]} + {bbox_mask.shape[2]}"
            )
        if len(fpns) != len(self.fpn_dims):
            raise ValueError(
                f"MaskHeadSmallConv: expected {len(self.fpn_dims)} fpn features, got {len(fpns)}"
            )
        for index, (fpn, channels) in enumerate(zip(fpns, self.fpn_dims, strict=True)):
            if fpn.dim() != 4 or fpn.shape[0] != x.shape[0] or fpn.shape[1] != channels:
                raise ValueError(
                    f"MaskHeadSmallConv: expected fpns[{index}] of shape [B={x.shape[0]}, "
                    f"{channels}, H, W], got {tuple(fpn.shape)}"
                )

    def extra_repr(self) -> str:
        return f"dim={self.dim}, fpn_dims={self.fpn_dims}, context_dim={self.context_dim}"
