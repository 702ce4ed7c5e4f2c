"""Shared parts of the deformable transformers (Deformable DETR, DINO and their descendants).

- :func:`deformable_transformer_layer`: the post-norm encoder layer (deformable
  self-attention, norm, FFN, norm) or decoder layer (multi-head self-attention, norm,
  deformable cross-attention, norm, FFN, norm);
- :class:`DeformableTransformerEncoder`: a stack of encoder layers over the flattened
  multi-scale features;
- :class:`DeformableTransformerBase`: holds encoder, decoder and the level embeddings, and
  flattens and encodes the feature levels; a detector's transformer subclasses it and builds
  the decoder queries;
- the geometry they need (valid ratios, the encoder's reference points, two-stage encoder
  proposals) is in :mod:`detr_ext.layers.deformable_geometry`.

Module and parameter names follow detrex (``layers.N.attentions.{0,1}``, ``ffns.0``,
``norms.{0,1,2}``, ``level_embeds``) so detrex checkpoints load unchanged. All tensors are
batch-first.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .attention import MultiheadAttention
from .deformable_geometry import get_encoder_reference_points, get_valid_ratio
from .mlp import FFN
from .multi_scale_deform_attn import MultiScaleDeformableAttention
from .transformer import BaseTransformerLayer, TransformerLayerSequence

__all__ = [
    "DeformableTransformerBase",
    "DeformableTransformerEncoder",
    "deformable_transformer_layer",
    "level_sizes",
]


def deformable_transformer_layer(
    embed_dim: int,
    num_heads: int,
    feedforward_dim: int,
    attn_dropout: float,
    ffn_dropout: float,
    num_feature_levels: int,
    num_points: int,
    decoder: bool = False,
) -> BaseTransformerLayer:
    """One post-norm layer of a deformable encoder or decoder.

    Args:
        embed_dim: model width ``C``.
        num_heads: attention heads (of every attention).
        feedforward_dim: hidden width of the FFN.
        attn_dropout: dropout on the output of the deformable attention and, in a decoder
            layer, on the attention weights and the output of the self-attention (as
            fundamentalvision/Deformable-DETR; detrex leaves the output dropout out).
        ffn_dropout: dropout inside the FFN.
        num_feature_levels: feature levels ``L`` the deformable attention samples.
        num_points: sampling points per head and level.
        decoder: build a decoder layer (multi-head self-attention among the queries, then
            deformable cross-attention into the memory) instead of an encoder layer
            (deformable self-attention).

    Returns:
        a :class:`BaseTransformerLayer` on ``[B, Q, C]`` queries.
    """
    attentions = []
    if decoder:
        attentions.append(
            MultiheadAttention(
                embed_dim=embed_dim,
                num_heads=num_heads,
                attn_drop=attn_dropout,
                proj_drop=attn_dropout,
                batch_first=True,
            )
        )
    attentions.append(
        MultiScaleDeformableAttention(
            embed_dim=embed_dim,
            num_heads=num_heads,
            num_levels=num_feature_levels,
            num_points=num_points,
            dropout=attn_dropout,
            batch_first=True,
        )
    )
    if decoder:
        operation_order = ("self_attn", "norm", "cross_attn", "norm", "ffn", "norm")
    else:
        operation_order = ("self_attn", "norm", "ffn", "norm")
    return BaseTransformerLayer(
        attn=attentions,
        ffn=FFN(
            embed_dim=embed_dim,
            feedforward_dim=feedforward_dim,
            output_dim=embed_dim,
            num_fcs=2,
            ffn_drop=ffn_dropout,
        ),
        norm=nn.LayerNorm(embed_dim),
        operation_order=operation_order,
    )


class DeformableTransformerEncoder(TransformerLayerSequence):
    """A stack of post-norm deformable self-attention layers over the flattened feature maps.

    Args:
        embed_dim: model width ``C``.
        num_heads: attention heads.
        feedforward_dim: hidden width of the FFN.
        attn_dropout: dropout on the deformable attention output.
        ffn_dropout: dropout inside the FFN.
        num_layers: number of layers.
        post_norm: add a final LayerNorm (``post_norm_layer``) after the last layer (off in
            Deformable DETR and DINO).
        num_feature_levels: feature levels ``L`` of the input.
        num_points: sampling points per head and level.
    """

    def __init__(
        self,
        embed_dim: int = 256,
        num_heads: int = 8,
        feedforward_dim: int = 1024,
        attn_dropout: float = 0.1,
        ffn_dropout: float = 0.1,
        num_layers: int = 6,
        post_norm: bool = False,
        num_feature_levels: int = 4,
        num_points: int = 4,
    ) -> None:
        layer = deformable_transformer_layer(
            embed_dim,
            num_heads,
            feedforward_dim,
            attn_dropout,
            ffn_dropout,
            num_feature_levels,
            num_points,
        )
        super().__init__(transformer_layers=layer, num_layers=num_layers)
        self.embed_dim = embed_dim
        self.num_feature_levels = num_feature_levels
        self.post_norm_layer = nn.LayerNorm(embed_dim) if post_norm else None

    def forward(
        self,
        query: Tensor,
        query_pos: Tensor,
        key_padding_mask: Tensor,
        reference_points: Tensor,
        spatial_shapes: Tensor,
        level_start_index: Tensor,
    ) -> Tensor:
        """Encode the flattened multi-scale features.

        Args:
            query: ``[B, N, C]`` features of all levels, flattened and concatenated.
            query_pos: ``[B, N, C]`` position plus level embedding.
            key_padding_mask: ``[B, N]`` bool, True at padded positions (their values are
                zeroed before sampling).
            reference_points: ``[B, N, L, 2]`` normalized (x, y) of every position, as seen
                on every level (see :func:`get_encoder_reference_points`).
            spatial_shapes: ``[L, 2]`` (H_l, W_l) per level.
            level_start_index: ``[L]`` offset of each level in ``N``.

        Returns:
            memory ``[B, N, C]``.
        """
        for layer in self.layers:
            query = layer(
                query,
                query_pos=query_pos,
                query_key_padding_mask=key_padding_mask,
                reference_points=reference_points,
                spatial_shapes=spatial_shapes,
                level_start_index=level_start_index,
            )
        if self.post_norm_layer is not None:
            query = self.post_norm_layer(query)
        return query


def level_sizes(multi_level_feats: Sequence[Tensor]) -> list[tuple[int, int]]:
    """``(H_l, W_l)`` of ``L`` maps ``[B, C, H_l, W_l]``, as Python (or, under
    ``torch.export``, symbolic) integers: the values of ``spatial_shapes`` without reading a
    tensor, for the geometry functions of :mod:`detr_ext.layers.deformable_geometry`."""
    return [(feat.shape[-2], feat.shape[-1]) for feat in multi_level_feats]


# ---------------------------------------------------------------------------- transformer


class DeformableTransformerBase(nn.Module):
    """Encoder, decoder and level embeddings of a deformable transformer, and its encoding step.

    A detector's transformer subclasses this, adds its query construction (learned queries,
    two-stage proposal selection, ...) and decoding, and calls :meth:`init_weights` at the
    end of its ``__init__``. The level embeddings are created here, uninitialised:
    :meth:`init_weights` fills them.

    Args:
        encoder: the encoder, with ``embed_dim`` (e.g. a :class:`DeformableTransformerEncoder`).
        decoder: the decoder, with the same ``embed_dim``.
        num_feature_levels: feature levels ``L``.
    """

    def __init__(self, encoder: nn.Module, decoder: nn.Module, num_feature_levels: int) -> None:
        super().__init__()
        if decoder.embed_dim != encoder.embed_dim:
            raise ValueError(
                f"{type(self).__name__}: encoder and decoder must have the same embed_dim, "
                f"got {encoder.embed_dim} and {decoder.embed_dim}"
            )
        self.encoder = encoder
        self.decoder = decoder
        self.num_feature_levels = num_feature_levels
        self.embed_dim = encoder.embed_dim
        self.level_embeds = nn.Parameter(torch.empty(num_feature_levels, self.embed_dim))

    def init_weights(self) -> None:
        """detrex's initialisation: Xavier-uniform for every matrix, then the deformable
        attentions' own init and a standard normal ``level_embeds``.

        A subclass with more parameters to initialise overrides this, calling
        :meth:`init_attention_weights` first and drawing ``level_embeds`` last, so the random
        draws stay in detrex's order.
        """
        self.init_attention_weights()
        nn.init.normal_(self.level_embeds)

    def init_attention_weights(self) -> None:
        """Xavier-uniform for every matrix, then each deformable attention's own init."""
        for parameter in self.parameters():
            if parameter.dim() > 1:
                nn.init.xavier_uniform_(parameter)
        for module in self.modules():
            if isinstance(module, MultiScaleDeformableAttention):
                module.init_weights()

    def flatten_levels(
        self,
        multi_level_feats: Sequence[Tensor],
        multi_level_masks: Sequence[Tensor],
        multi_level_pos_embeds: Sequence[Tensor],
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Concatenate the levels into sequences.

        Args:
            multi_level_feats: ``L`` maps ``[B, C, H_l, W_l]``.
            multi_level_masks: ``L`` bool masks ``[B, H_l, W_l]``, True at padding.
            multi_level_pos_embeds: ``L`` position embeddings ``[B, C, H_l, W_l]``.

        Returns:
            ``(feats [B, N, C], masks [B, N], pos [B, N, C], spatial_shapes [L, 2] int64,
            level_start_index [L] int64)``; ``pos`` includes the level embedding.
        """
        counts = (len(multi_level_feats), len(multi_level_masks), len(multi_level_pos_embeds))
        if any(count != self.num_feature_levels for count in counts):
            raise ValueError(
                f"{type(self).__name__}: expected {self.num_feature_levels} feature maps, masks "
                f"and position embeddings, got {counts[0]}, {counts[1]} and {counts[2]}"
            )
        feats, masks, pos_embeds, shapes = [], [], [], []
        for level, (feat, mask, pos_embed) in enumerate(
            zip(multi_level_feats, multi_level_masks, multi_level_pos_embeds, strict=True)
        ):
            shapes.append(tuple(feat.shape[-2:]))
            feats.append(feat.flatten(2).transpose(1, 2))
            masks.append(mask.flatten(1))
            pos_embeds.append(
                pos_embed.flatten(2).transpose(1, 2) + self.level_embeds[level].view(1, 1, -1)
            )
        # torch.tensor, not torch.as_tensor: under torch.export with dynamic image sizes the
        # former records the symbolic sizes, the latter specializes them to the example's.
        spatial_shapes = torch.tensor(shapes, dtype=torch.long, device=feats[0].device)
        level_start_index = torch.cat(
            (spatial_shapes.new_zeros((1,)), spatial_shapes.prod(1).cumsum(0)[:-1])
        )
        return (
            torch.cat(feats, 1),
            torch.cat(masks, 1),
            torch.cat(pos_embeds, 1),
            spatial_shapes,
            level_start_index,
        )

    def encode(
        self,
        multi_level_feats: Sequence[Tensor],
        multi_level_masks: Sequence[Tensor],
        multi_level_pos_embeds: Sequence[Tensor],
        **encoder_inputs: Tensor | None,
    ) -> tuple[Any, Tensor, Tensor, Tensor, Tensor]:
        """Flatten the levels and run the encoder.

        Args: as :meth:`flatten_levels`; ``encoder_inputs`` go to the encoder as keywords
        (e.g. Grounding DINO's ``text`` and ``text_padding_mask``).

        Returns:
            ``(memory, mask_flatten [B, N] bool, spatial_shapes [L, 2], level_start_index
            [L], valid_ratios [B, L, 2])``; ``memory`` is what the encoder returns: ``[B, N,
            C]`` (Grounding DINO's encoder: ``(memory, text_memory)``).
        """
        feat_flatten, mask_flatten, pos_flatten, spatial_shapes, level_start_index = (
            self.flatten_levels(multi_level_feats, multi_level_masks, multi_level_pos_embeds)
        )
        valid_ratios = torch.stack([get_valid_ratio(mask) for mask in multi_level_masks], 1)
        # The sizes from the maps' shapes, not from the spatial_shapes tensor: the same values,
        # but they stay symbolic under torch.export (a tensor's values are data-dependent).
        reference_points = get_encoder_reference_points(
            level_sizes(multi_level_feats), valid_ratios, device=feat_flatten.device
        )
        memory = self.encoder(
            feat_flatten,
            query_pos=pos_flatten,
            key_padding_mask=mask_flatten,
            reference_points=reference_points,
            spatial_shapes=spatial_shapes,
            level_start_index=level_start_index,
            **encoder_inputs,
        )
        return memory, mask_flatten, spatial_shapes, level_start_index, valid_ratios
