"""DETR's encoder-decoder transformer (Carion et al., 2020), with detrex parameter names.

The encoder is a stack of post-norm layers ``(self_attn, norm, ffn, norm)`` over the
flattened feature map; the decoder stacks ``(self_attn, norm, cross_attn, norm, ffn, norm)``
layers over the object queries and normalizes every layer's output with one shared
``post_norm_layer`` (the auxiliary losses use all of them). Parameter names match detrex's
``DetrTransformer``, e.g. ``decoder.layers.0.attentions.1.attn.in_proj_weight``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .attention import MultiheadAttention
from .mlp import FFN
from .transformer import BaseTransformerLayer, TransformerLayerSequence

__all__ = ["DetrTransformer", "DetrTransformerDecoder", "DetrTransformerEncoder"]


def _check_dims(embed_dim: int, num_heads: int, num_layers: int, where: str) -> None:
    if embed_dim <= 0 or num_heads <= 0 or embed_dim % num_heads != 0 or num_layers < 1:
        raise ValueError(
            f"{where}: expected embed_dim divisible by num_heads and num_layers >= 1, got "
            f"embed_dim={embed_dim}, num_heads={num_heads}, num_layers={num_layers}"
        )


class DetrTransformerEncoder(TransformerLayerSequence):
    """Post-norm self-attention encoder.

    Args:
        embed_dim: channels ``C``.
        num_heads: attention heads.
        attn_dropout: dropout on the attention weights and on the attention output before
            the residual sum (facebookresearch/detr's ``dropout1``; detrex leaves the latter out).
        feedforward_dim: hidden channels of the FFN.
        ffn_dropout: dropout inside the FFN.
        num_layers: number of layers.
        post_norm: add a final LayerNorm (``post_norm_layer``); DETR's post-norm layers
            already end with a norm, so DETR leaves it off.
    """

    def __init__(
        self,
        embed_dim: int = 256,
        num_heads: int = 8,
        attn_dropout: float = 0.1,
        feedforward_dim: int = 2048,
        ffn_dropout: float = 0.1,
        num_layers: int = 6,
        post_norm: bool = False,
    ) -> None:
        _check_dims(embed_dim, num_heads, num_layers, "DetrTransformerEncoder")
        super().__init__(
            transformer_layers=BaseTransformerLayer(
                attn=MultiheadAttention(
                    embed_dim, num_heads, attn_drop=attn_dropout, proj_drop=attn_dropout
                ),
                ffn=FFN(embed_dim, feedforward_dim, ffn_drop=ffn_dropout),
                norm=nn.LayerNorm(embed_dim),
                operation_order=("self_attn", "norm", "ffn", "norm"),
            ),
            num_layers=num_layers,
        )
        self.embed_dim = embed_dim
        self.post_norm_layer = nn.LayerNorm(embed_dim) if post_norm else None

    def forward(
        self,
        query: Tensor,
        query_pos: Tensor | None = None,
        query_key_padding_mask: Tensor | None = None,
    ) -> Tensor:
        """Encode the flattened feature map.

        Args:
            query: ``[B, HW, C]`` features.
            query_pos: ``[B, HW, C]`` positional embedding (added to queries and keys).
            query_key_padding_mask: ``[B, HW]`` bool, True on padding.

        Returns:
            ``[B, HW, C]`` memory.
        """
        for layer in self.layers:
            query = layer(
                query,
                query_pos=query_pos,
                query_key_padding_mask=query_key_padding_mask,
            )
        if self.post_norm_layer is not None:
            query = self.post_norm_layer(query)
        return query


class DetrTransformerDecoder(TransformerLayerSequence):
    """Post-norm decoder: query self-attention, cross-attention to the memory, FFN.

    Args:
        embed_dim: channels ``C``.
        num_heads: attention heads.
        attn_dropout: dropout on the attention weights and on the attention output before
            the residual sum (facebookresearch/detr's ``dropout1``; detrex leaves the latter out).
        feedforward_dim: hidden channels of the FFN.
        ffn_dropout: dropout inside the FFN.
        num_layers: number of layers.
        return_intermediate: return the (normalized) output of every layer, not just the last.
        post_norm: normalize the returned outputs with ``post_norm_layer``.
    """

    def __init__(
        self,
        embed_dim: int = 256,
        num_heads: int = 8,
        attn_dropout: float = 0.1,
        feedforward_dim: int = 2048,
        ffn_dropout: float = 0.1,
        num_layers: int = 6,
        return_intermediate: bool = True,
        post_norm: bool = True,
    ) -> None:
        _check_dims(embed_dim, num_heads, num_layers, "DetrTransformerDecoder")
        super().__init__(
            transformer_layers=BaseTransformerLayer(
                attn=MultiheadAttention(
                    embed_dim, num_heads, attn_drop=attn_dropout, proj_drop=attn_dropout
                ),
                ffn=FFN(embed_dim, feedforward_dim, ffn_drop=ffn_dropout),
                norm=nn.LayerNorm(embed_dim),
                operation_order=("self_attn", "norm", "cross_attn", "norm", "ffn", "norm"),
            ),
            num_layers=num_layers,
        )
        self.embed_dim = embed_dim
        self.return_intermediate = return_intermediate
        self.post_norm_layer = nn.LayerNorm(embed_dim) if post_norm else None

    def _normalize(self, query: Tensor) -> Tensor:
        return query if self.post_norm_layer is None else self.post_norm_layer(query)

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        query_pos: Tensor | None = None,
        key_pos: Tensor | None = None,
        key_padding_mask: Tensor | None = None,
    ) -> Tensor:
        """Decode the object queries.

        Args:
            query: ``[B, Q, C]`` decoder input (zeros in DETR).
            key: ``[B, HW, C]`` encoder memory.
            value: ``[B, HW, C]`` encoder memory.
            query_pos: ``[B, Q, C]`` learned query embedding.
            key_pos: ``[B, HW, C]`` positional embedding of the memory.
            key_padding_mask: ``[B, HW]`` bool, True on padding.

        Returns:
            ``[L, B, Q, C]``: every layer's output with ``return_intermediate`` (``L`` =
            ``num_layers``), else the last layer's (``L = 1``).
        """
        intermediate = []
        for layer in self.layers:
            query = layer(
                query,
                key,
                value,
                query_pos=query_pos,
                key_pos=key_pos,
                key_padding_mask=key_padding_mask,
            )
            if self.return_intermediate:
                intermediate.append(self._normalize(query))
        if not self.return_intermediate:
            intermediate.append(self._normalize(query))
        return torch.stack(intermediate)


class DetrTransformer(nn.Module):
    """DETR's transformer: encode the feature map, decode ``Q`` learned object queries.

    Args:
        encoder: a :class:`DetrTransformerEncoder`.
        decoder: a :class:`DetrTransformerDecoder` with the same ``embed_dim``.
    """

    def __init__(self, encoder: DetrTransformerEncoder, decoder: DetrTransformerDecoder) -> None:
        super().__init__()
        if encoder.embed_dim != decoder.embed_dim:
            raise ValueError(
                "DetrTransformer: expected encoder and decoder with the same embed_dim, got "
                f"{encoder.embed_dim} and {decoder.embed_dim}"
            )
        self.encoder = encoder
        self.decoder = decoder
        self.embed_dim = encoder.embed_dim
        self.init_weights()

    def init_weights(self) -> None:
        """Xavier-uniform initialization of every weight matrix (as DETR and detrex)."""
        for parameter in self.parameters():
            if parameter.dim() > 1:
                nn.init.xavier_uniform_(parameter)

    def forward(
        self, features: Tensor, mask: Tensor, query_embed: Tensor, pos_embed: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Run encoder and decoder.

        Args:
            features: ``[B, C, H, W]`` projected backbone features.
            mask: ``[B, H, W]`` bool, True on padding.
            query_embed: ``[Q, C]`` learned query positional embedding.
            pos_embed: ``[B, C, H, W]`` positional embedding of the feature map.

        Returns:
            ``(hidden_states, memory)``: ``[L, B, Q, C]`` decoder outputs (see
            :meth:`DetrTransformerDecoder.forward`) and the ``[B, C, H, W]`` encoder memory.
        """
        batch_size, channels, height, width = features.shape
        if channels != self.embed_dim or pos_embed.shape != features.shape:
            raise ValueError(
                f"DetrTransformer: expected features and pos_embed [B, {self.embed_dim}, H, W], "
                f"got {tuple(features.shape)} and {tuple(pos_embed.shape)}"
            )
        if mask.shape != (batch_size, height, width):
            raise ValueError(
                f"DetrTransformer: expected mask {(batch_size, height, width)}, "
                f"got {tuple(mask.shape)}"
            )
        features = features.flatten(2).transpose(1, 2)  # [B, HW, C]
        pos_embed = pos_embed.flatten(2).transpose(1, 2)
        mask = mask.flatten(1)  # [B, HW]
        query_pos = query_embed.unsqueeze(0).expand(batch_size, -1, -1)  # [B, Q, C]

        memory = self.encoder(features, query_pos=pos_embed, query_key_padding_mask=mask)
        target = torch.zeros_like(query_pos)
        hidden_states = self.decoder(
            target,
            memory,
            memory,
            query_pos=query_pos,
            key_pos=pos_embed,
            key_padding_mask=mask,
        )
        memory = memory.transpose(1, 2).reshape(batch_size, channels, height, width)
        return hidden_states, memory
