"""Multi-head attention with positional embeddings and a residual connection.

The module keeps the parameter layout of detrex's ``MultiheadAttention`` (an inner
``nn.MultiheadAttention`` stored as ``attn``) so detrex checkpoints load unchanged.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["MultiheadAttention"]


class MultiheadAttention(nn.Module):
    """``nn.MultiheadAttention`` plus positional embeddings, output dropout and a residual.

    Positional embeddings are added to the query and the key, never to the value. The result
    is ``identity + proj_drop(attention_output)``.

    Args:
        embed_dim: channel count ``C`` of query, key and value.
        num_heads: number of attention heads; must divide ``embed_dim``.
        attn_drop: dropout on the attention weights.
        proj_drop: dropout on the attention output before the residual sum.
        batch_first: if True, tensors are ``[B, L, C]``, else ``[L, B, C]``.
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        batch_first: bool = True,
    ) -> None:
        super().__init__()
        if num_heads <= 0 or embed_dim <= 0 or embed_dim % num_heads != 0:
            raise ValueError(
                "MultiheadAttention: expected positive embed_dim divisible by positive "
                f"num_heads, got embed_dim={embed_dim}, num_heads={num_heads}"
            )
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.batch_first = batch_first
        # The inner attention is always sequence-first; batch-first inputs are transposed
        # here, which keeps the computation path (and its numerics) independent of the flag.
        self.attn = nn.MultiheadAttention(embed_dim, num_heads, dropout=attn_drop)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor | None = None,
        value: torch.Tensor | None = None,
        identity: torch.Tensor | None = None,
        query_pos: torch.Tensor | None = None,
        key_pos: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
        key_padding_mask: torch.Tensor | None = None,
        **kwargs,
    ) -> torch.Tensor:
        """Attend from ``query`` to ``key``/``value`` and add the residual.

        Shapes below are for ``batch_first=True``; swap ``B`` and the length otherwise.

        Args:
            query: ``[B, Q, C]``.
            key: ``[B, K, C]``; defaults to ``query``.
            value: ``[B, K, C]``; defaults to ``key``.
            identity: ``[B, Q, C]`` residual; defaults to ``query`` (before adding pos).
            query_pos: ``[B, Q, C]`` added to the query.
            key_pos: ``[B, K, C]`` added to the key; defaults to ``query_pos`` when that
                has the key's shape.
            attn_mask: ``[Q, K]`` or ``[B * num_heads, Q, K]``, as for nn.MultiheadAttention.
            key_padding_mask: ``[B, K]`` bool, True marks keys to ignore.
            **kwargs: ignored; lets layers pass extra arguments meant for other attentions.

        Returns:
            ``[B, Q, C]``.
        """
        if query.dim() != 3:
            raise ValueError(
                f"MultiheadAttention: expected a 3-D query, got shape {tuple(query.shape)}"
            )
        if key is None:
            key = query
        if value is None:
            value = key
        if identity is None:
            identity = query
        if key_pos is None and query_pos is not None and query_pos.shape == key.shape:
            key_pos = query_pos
        if query_pos is not None:
            query = query + query_pos
        if key_pos is not None:
            key = key + key_pos

        if self.batch_first:
            query = query.transpose(0, 1)
            key = key.transpose(0, 1)
            value = value.transpose(0, 1)
        out = self.attn(
            query=query,
            key=key,
            value=value,
            attn_mask=attn_mask,
            key_padding_mask=key_padding_mask,
        )[0]
        if self.batch_first:
            out = out.transpose(0, 1)
        return identity + self.proj_drop(out)

    def extra_repr(self) -> str:
        return f"batch_first={self.batch_first}"
