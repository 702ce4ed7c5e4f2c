"""Text-side attention layers of Grounding DINO.

- :class:`TextEnhancerLayer`: post-norm self-attention + FFN over the text tokens (the text half
  of the encoder's "feature enhancer");
- :class:`TextCrossAttention`: decoder queries attend to the text tokens, inside a
  :class:`~detr_ext.layers.BaseTransformerLayer` next to the deformable cross-attention;
- :func:`check_text`: the shape check of ``text [B, T, C]`` / ``text_padding_mask [B, T]``.

Padded tokens (``text_padding_mask`` True) are never attended; a prompt that is all padding
gives finite outputs instead of NaN.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .attention import MultiheadAttention

__all__ = ["TextCrossAttention", "TextEnhancerLayer", "check_text"]


def check_text(
    text: Tensor, text_padding_mask: Tensor | None, embed_dim: int, batch_size: int, where: str
) -> None:
    """Raise a ValueError unless ``text`` is ``[B, T, embed_dim]`` and the mask ``[B, T]`` bool."""
    if not isinstance(text, Tensor) or text.dim() != 3 or text.shape[-1] != embed_dim:
        got = tuple(text.shape) if isinstance(text, Tensor) else type(text).__name__
        raise ValueError(f"{where}: expected text of shape [B, T, {embed_dim}], got {got}")
    if text.shape[0] != batch_size:
        raise ValueError(
            f"{where}: expected text for {batch_size} images (the image batch), got {text.shape[0]}"
        )
    if text_padding_mask is None:
        return
    if (
        not isinstance(text_padding_mask, Tensor)
        or text_padding_mask.dtype != torch.bool
        or text_padding_mask.shape != text.shape[:2]
    ):
        got = (
            f"shape {tuple(text_padding_mask.shape)}, dtype {text_padding_mask.dtype}"
            if isinstance(text_padding_mask, Tensor)
            else type(text_padding_mask).__name__
        )
        raise ValueError(
            f"{where}: expected text_padding_mask as a bool tensor of shape "
            f"{tuple(text.shape[:2])} (True = padding), got {got}"
        )


def _attendable_key_mask(key_padding_mask: Tensor | None) -> Tensor | None:
    """Unmask the rows whose keys are all padding: attending to nothing gives NaN in
    ``nn.MultiheadAttention``, so such a row (an empty prompt) attends to all its keys."""
    if key_padding_mask is None:
        return None
    return key_padding_mask & ~key_padding_mask.all(dim=-1, keepdim=True)


class TextEnhancerLayer(nn.Module):
    """Post-norm transformer encoder layer over the text tokens (Grounding DINO's text enhancer).

    ``t = norm1(t + dropout1(self_attn(t + pos, t + pos, t)))``, then
    ``t = norm2(t + dropout2(linear2(dropout(relu(linear1(t))))))``. Names follow IDEA's
    ``TransformerEncoderLayer``.

    Args:
        embed_dim: channels ``C`` of the text tokens.
        num_heads: attention heads.
        feedforward_dim: hidden width of the FFN.
        dropout: dropout on the attention weights, after the attention and inside the FFN.
    """

    def __init__(
        self, embed_dim: int, num_heads: int, feedforward_dim: int, dropout: float = 0.1
    ) -> None:
        super().__init__()
        if num_heads <= 0 or embed_dim % num_heads != 0:
            raise ValueError(
                "TextEnhancerLayer: expected embed_dim divisible by a positive num_heads, got "
                f"embed_dim={embed_dim}, num_heads={num_heads}"
            )
        self.embed_dim = embed_dim
        # Sequence-first on purpose: nn.MultiheadAttention then never takes its fused
        # inference fast path, so training and eval compute the same way.
        self.self_attn = nn.MultiheadAttention(embed_dim, num_heads, dropout=dropout)
        self.linear1 = nn.Linear(embed_dim, feedforward_dim)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(feedforward_dim, embed_dim)
        self.norm1 = nn.LayerNorm(embed_dim)
        self.norm2 = nn.LayerNorm(embed_dim)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.activation = nn.ReLU()

    def forward(
        self,
        text: Tensor,
        text_padding_mask: Tensor | None = None,
        text_pos: Tensor | None = None,
    ) -> Tensor:
        """Self-attention and FFN over the text tokens.

        Args:
            text: ``[B, T, C]``.
            text_padding_mask: ``[B, T]`` bool, True on padded tokens (never attended), or None.
            text_pos: ``[B, T, C]`` position embedding added to queries and keys, or None.

        Returns:
            ``[B, T, C]``.
        """
        check_text(text, text_padding_mask, self.embed_dim, text.shape[0], "TextEnhancerLayer")
        query = text if text_pos is None else text + text_pos
        attended = self.self_attn(
            query.transpose(0, 1),
            query.transpose(0, 1),
            text.transpose(0, 1),
            key_padding_mask=_attendable_key_mask(text_padding_mask),
            need_weights=False,
        )[0].transpose(0, 1)
        text = self.norm1(text + self.dropout1(attended))
        hidden = self.linear2(self.dropout(self.activation(self.linear1(text))))
        return self.norm2(text + self.dropout2(hidden))


class TextCrossAttention(MultiheadAttention):
    """Decoder queries attend to the text tokens (Grounding DINO's ``ca_text``).

    It sits in a :class:`~detr_ext.layers.BaseTransformerLayer` next to the deformable
    cross-attention; as that layer hands the same ``key`` / ``value`` (the image memory) to
    every cross-attention, the text arrives through the keyword arguments ``text`` and
    ``text_padding_mask`` and the image arguments are ignored. The query positional embedding
    is added to the queries only (the text keys carry none). A prompt that is all padding
    gives attention over zeroed tokens: finite and independent of the padded features.

    Args: as :class:`~detr_ext.layers.MultiheadAttention`.
    """

    def forward(
        self,
        query: Tensor,
        key: Tensor | None = None,
        value: Tensor | None = None,
        identity: Tensor | None = None,
        query_pos: Tensor | None = None,
        key_pos: Tensor | None = None,
        attn_mask: Tensor | None = None,
        key_padding_mask: Tensor | None = None,
        text: Tensor | None = None,
        text_padding_mask: Tensor | None = None,
        **kwargs,
    ) -> Tensor:
        """Attend from the queries to the text.

        Args:
            query: ``[B, Q, C]``.
            key, value, key_pos, attn_mask, key_padding_mask: the image-memory arguments of
                the layer, ignored.
            identity: ``[B, Q, C]`` residual; defaults to ``query``.
            query_pos: ``[B, Q, C]`` added to the query.
            text: ``[B, T, C]`` text tokens (required).
            text_padding_mask: ``[B, T]`` bool, True on padded tokens, or None.
            **kwargs: ignored (arguments of the other attentions of the layer).

        Returns:
            ``[B, Q, C]``.
        """
        if not self.batch_first:
            raise ValueError("TextCrossAttention: expected batch_first=True, got False")
        if text is None:
            raise ValueError(
                "TextCrossAttention: expected the text tokens as keyword argument text=[B, T, C], "
                "got None"
            )
        check_text(text, text_padding_mask, self.embed_dim, query.shape[0], "TextCrossAttention")
        if text_padding_mask is not None:
            text = text.masked_fill(text_padding_mask[..., None], 0.0)
        if identity is None:
            identity = query
        if query_pos is not None:
            query = query + query_pos
        # query_pos is already added: passing it on would also add it to the text keys
        # whenever T equals the number of queries (MultiheadAttention's self-attention default).
        return super().forward(
            query,
            key=text,
            value=text,
            identity=identity,
            key_padding_mask=_attendable_key_mask(text_padding_mask),
        )
