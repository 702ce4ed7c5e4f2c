"""Grounding DINO's text-aware encoder ("feature enhancer") and decoder, built on DINO's.

Encoder, per layer ``i`` (as IDEA-Research's Grounding DINO):

1. ``fusion_layers[i]``: :class:`~detr_ext.layers.BiAttentionBlock`, image tokens <-> text
   tokens;
2. ``text_layers[i]``: :class:`~detr_ext.layers.TextEnhancerLayer`, post-norm self-attention
   + FFN over the text tokens (with a sine embedding of the token positions);
3. ``layers[i]``: DINO's deformable encoder layer (deformable self-attention, norm, FFN, norm)
   over the image tokens.

Decoder layer: self-attention, norm, text cross-attention (queries -> text tokens), norm,
deformable cross-attention (queries -> image memory), norm, FFN, norm; the box refinement
("look forward twice") and the query positional embedding are DINO's.

Parameter names: the deformable parts keep detrex's (``layers.N.attentions.{0,1,2}``,
``norms.N``, ``ffns.0``); the new encoder parts use IDEA's (``fusion_layers.N.attn.v_proj``,
``text_layers.N.self_attn``, ``linear1``, ``norm1`` ...). The decoder's text cross-attention is
``layers.N.attentions.1`` (IDEA: ``ca_text``), its norm ``layers.N.norms.1`` (IDEA:
``catext_norm``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .attention import MultiheadAttention
from .deformable_transformer import DeformableTransformerEncoder
from .dino_encoder_decoder import DINOTransformerDecoder
from .mlp import FFN
from .multi_scale_deform_attn import MultiScaleDeformableAttention
from .position_embedding import get_sine_pos_embed
from .text_attention import TextCrossAttention, TextEnhancerLayer, check_text
from .transformer import BaseTransformerLayer
from .vl_fusion import BiAttentionBlock

__all__ = ["GroundingDINODecoder", "GroundingDINOEncoder", "grounding_decoder_layer"]


def grounding_decoder_layer(
    embed_dim: int,
    num_heads: int,
    feedforward_dim: int,
    attn_dropout: float,
    ffn_dropout: float,
    num_feature_levels: int,
    num_points: int,
) -> BaseTransformerLayer:
    """One post-norm Grounding-DINO decoder layer.

    Order: self-attention (``attentions.0``), norm, text cross-attention (``attentions.1``,
    :class:`TextCrossAttention`), norm, deformable cross-attention (``attentions.2``), norm,
    FFN, norm. Arguments as :func:`~detr_ext.layers.deformable_transformer_layer`.
    """
    attentions = [
        MultiheadAttention(embed_dim, num_heads, attn_drop=attn_dropout, batch_first=True),
        TextCrossAttention(
            embed_dim, num_heads, attn_drop=attn_dropout, proj_drop=attn_dropout, batch_first=True
        ),
        MultiScaleDeformableAttention(
            embed_dim=embed_dim,
            num_heads=num_heads,
            num_levels=num_feature_levels,
            num_points=num_points,
            dropout=attn_dropout,
            batch_first=True,
        ),
    ]
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
        operation_order=(
            "self_attn",
            "norm",
            "cross_attn",
            "norm",
            "cross_attn",
            "norm",
            "ffn",
            "norm",
        ),
    )


class GroundingDINOEncoder(DeformableTransformerEncoder):
    """Feature enhancer: fusion, text self-attention and deformable image self-attention.

    Args:
        embed_dim, num_heads, feedforward_dim, attn_dropout, ffn_dropout, num_layers,
        post_norm, num_feature_levels, num_points: the deformable image layers, as
            :class:`~detr_ext.layers.DeformableTransformerEncoder`.
        text_num_heads: heads of the text self-attention (IDEA: 4).
        text_feedforward_dim: FFN width of the text layers (IDEA: 1024).
        text_dropout: dropout of the text layers.
        text_pos_embed: add a sine embedding of the token positions ``0 .. T-1`` to the
            queries and keys of the text self-attention (as Grounding DINO).
        fusion_embed_dim: width of the fusion attention (IDEA: 1024).
        fusion_num_heads: heads of the fusion attention (IDEA: 4).
        fusion_dropout: dropout on the fusion attention probabilities.
        fusion_drop_path: DropPath rate of the fusion residuals (IDEA: 0.1).
        fusion_init_values: initial layer-scale of the fusion residuals.
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
        text_num_heads: int = 4,
        text_feedforward_dim: int = 1024,
        text_dropout: float = 0.1,
        text_pos_embed: bool = True,
        fusion_embed_dim: int = 1024,
        fusion_num_heads: int = 4,
        fusion_dropout: float = 0.1,
        fusion_drop_path: float = 0.1,
        fusion_init_values: float = 1e-4,
    ) -> None:
        if text_pos_embed and embed_dim % 2 != 0:
            raise ValueError(
                "GroundingDINOEncoder: the text position embedding needs an even embed_dim, "
                f"got {embed_dim}"
            )
        super().__init__(
            embed_dim=embed_dim,
            num_heads=num_heads,
            feedforward_dim=feedforward_dim,
            attn_dropout=attn_dropout,
            ffn_dropout=ffn_dropout,
            num_layers=num_layers,
            post_norm=post_norm,
            num_feature_levels=num_feature_levels,
            num_points=num_points,
        )
        self.text_pos_embed = text_pos_embed
        self.fusion_layers = nn.ModuleList(
            BiAttentionBlock(
                embed_dim,
                embed_dim,
                fusion_embed_dim,
                fusion_num_heads,
                dropout=fusion_dropout,
                drop_path=fusion_drop_path,
                init_values=fusion_init_values,
            )
            for _ in range(num_layers)
        )
        self.text_layers = nn.ModuleList(
            TextEnhancerLayer(embed_dim, text_num_heads, text_feedforward_dim, text_dropout)
            for _ in range(num_layers)
        )

    def forward(
        self,
        query: Tensor,
        query_pos: Tensor,
        key_padding_mask: Tensor,
        reference_points: Tensor,
        spatial_shapes: Tensor,
        level_start_index: Tensor,
        text: Tensor,
        text_padding_mask: Tensor | None,
    ) -> tuple[Tensor, Tensor]:
        """Encode image and text tokens together.

        Args:
            query, query_pos, key_padding_mask, reference_points, spatial_shapes,
            level_start_index: the flattened image levels, as
                :meth:`DeformableTransformerEncoder.forward` (``[B, N, C]`` tokens,
                ``key_padding_mask [B, N]`` True on padding).
            text: ``[B, T, C]`` text tokens (projected to ``embed_dim``).
            text_padding_mask: ``[B, T]`` bool, True on padded tokens, or None.

        Returns:
            ``(memory [B, N, C], text_memory [B, T, C])``.
        """
        check_text(text, text_padding_mask, self.embed_dim, query.shape[0], "GroundingDINOEncoder")
        text_pos = None
        if self.text_pos_embed:
            batch_size, num_tokens, _ = text.shape
            positions = torch.arange(num_tokens, dtype=torch.float32, device=text.device)
            text_pos = get_sine_pos_embed(
                positions[None, :, None].expand(batch_size, -1, -1),
                num_pos_feats=self.embed_dim,
                exchange_xy=False,
            ).to(text.dtype)
        for fusion_layer, text_layer, layer in zip(
            self.fusion_layers, self.text_layers, self.layers, strict=True
        ):
            query, text = fusion_layer(
                query, text, attention_mask_v=key_padding_mask, attention_mask_l=text_padding_mask
            )
            text = text_layer(text, text_padding_mask, text_pos)
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
        return query, text


class GroundingDINODecoder(DINOTransformerDecoder):
    """DINO's box-refining decoder with a text cross-attention in every layer.

    :class:`~detr_ext.layers.DINOTransformerDecoder` (same arguments, ``ref_point_head``, final
    ``norm``, look forward twice, the same layer loop) with :func:`grounding_decoder_layer`
    layers; the detector assigns ``class_embed`` (``num_layers + 1``
    :class:`~detr_ext.layers.TokenAlignmentHead`, the last one scoring the encoder proposals)
    and ``bbox_embed`` after construction.

    ``forward`` takes DINO's decoder inputs plus, for every layer, ``text`` (``[B, T, C]`` text
    memory from the encoder) and ``text_padding_mask`` (``[B, T]`` bool, True on padded tokens,
    or None), after ``level_start_index`` or as keywords; it returns ``(states [num_layers, B,
    Q, C], references [num_layers, B, Q, 4])``.
    """

    build_layer = staticmethod(grounding_decoder_layer)
    num_attentions = 3  # self-attention, text cross-attention, deformable cross-attention

    def check_layer_inputs(  # type: ignore[override]
        self, query: Tensor, text: Tensor, text_padding_mask: Tensor | None
    ) -> None:
        """``text`` must be ``[B, T, embed_dim]`` and ``text_padding_mask`` ``[B, T]``."""
        check_text(text, text_padding_mask, self.embed_dim, query.shape[0], type(self).__name__)

    def forward(  # type: ignore[override]
        self,
        query: Tensor,
        value: Tensor,
        key_padding_mask: Tensor,
        reference_points: Tensor,
        valid_ratios: Tensor,
        spatial_shapes: Tensor,
        level_start_index: Tensor,
        text: Tensor,
        text_padding_mask: Tensor | None,
        attn_mask: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """:meth:`DINOTransformerDecoder.forward` with the text inputs (class docs)."""
        return super().forward(
            query,
            value,
            key_padding_mask,
            reference_points,
            valid_ratios,
            spatial_shapes,
            level_start_index,
            attn_mask,
            text=text,
            text_padding_mask=text_padding_mask,
        )
