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
from .box_ops import inverse_sigmoid
from .deformable_transformer import DeformableTransformerEncoder
from .mlp import FFN, MLP
from .multi_scale_deform_attn import MultiScaleDeformableAttention
from .position_embedding import get_sine_pos_embed
from .text_attention import TextCrossAttention, TextEnhancerLayer, check_text
from .transformer import BaseTransformerLayer, TransformerLayerSequence
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
            )
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


class GroundingDINODecoder(TransformerLayerSequence):
    """DINO's box-refining decoder with a text cross-attention in every layer.

    As :class:`~detr_ext.layers.DINOTransformerDecoder` (same arguments, ``ref_point_head``,
    final ``norm``, look forward twice); the detector assigns ``class_embed`` (``num_layers +
    1`` :class:`~detr_ext.layers.TokenAlignmentHead`, the last one scoring the encoder
    proposals) and ``bbox_embed`` after construction. Layers: :func:`grounding_decoder_layer`.
    """

    def __init__(
        self,
        embed_dim: int = 256,
        num_heads: int = 8,
        feedforward_dim: int = 1024,
        attn_dropout: float = 0.1,
        ffn_dropout: float = 0.1,
        num_layers: int = 6,
        num_feature_levels: int = 4,
        num_points: int = 4,
        look_forward_twice: bool = True,
    ) -> None:
        if embed_dim % 2 != 0:
            raise ValueError(f"GroundingDINODecoder: expected an even embed_dim, got {embed_dim}")
        layer = grounding_decoder_layer(
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
        self.look_forward_twice = look_forward_twice
        # The sine embedding of a (cx, cy, w, h) box has 4 * (C / 2) = 2C channels.
        self.ref_point_head = MLP(2 * embed_dim, embed_dim, embed_dim, 2)
        self.norm = nn.LayerNorm(embed_dim)
        self.class_embed: nn.ModuleList | None = None
        self.bbox_embed: nn.ModuleList | None = None

    def forward(
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
        """Decode the queries against image memory and text, refining their boxes.

        Args:
            query: ``[B, Q, C]`` content queries (denoising queries first, if any).
            value: ``[B, N, C]`` encoder memory.
            key_padding_mask: ``[B, N]`` bool, True on padded image positions.
            reference_points: ``[B, Q, 4]`` initial boxes, normalized ``cxcywh``.
            valid_ratios: ``[B, L, 2]``.
            spatial_shapes: ``[L, 2]``.
            level_start_index: ``[L]``.
            text: ``[B, T, C]`` text memory from the encoder.
            text_padding_mask: ``[B, T]`` bool, True on padded tokens, or None.
            attn_mask: ``[Q, Q]`` bool self-attention mask (True = blocked), or None.

        Returns:
            ``(states [num_layers, B, Q, C], references [num_layers, B, Q, 4])`` as
            :class:`~detr_ext.layers.DINOTransformerDecoder`.
        """
        if self.bbox_embed is None:
            raise RuntimeError(
                "GroundingDINODecoder: bbox_embed is not set; the detector must assign its "
                "box heads (decoder.bbox_embed = ...) before the decoder runs"
            )
        if reference_points.dim() != 3 or reference_points.shape[-1] != 4:
            raise ValueError(
                "GroundingDINODecoder: expected reference_points [B, Q, 4] (cxcywh), got "
                f"{tuple(reference_points.shape)}"
            )
        check_text(text, text_padding_mask, self.embed_dim, query.shape[0], "GroundingDINODecoder")
        output = query
        states, references = [], []
        box_ratios = torch.cat([valid_ratios, valid_ratios], -1)[:, None]  # [B, 1, L, 4]
        for layer_index, layer in enumerate(self.layers):
            # Boxes in the frame of each level's valid (unpadded) area: [B, Q, L, 4].
            reference_points_input = reference_points[:, :, None] * box_ratios
            query_sine_embed = get_sine_pos_embed(
                reference_points_input[:, :, 0, :], num_pos_feats=self.embed_dim // 2
            )
            query_pos = self.ref_point_head(query_sine_embed)
            output = layer(
                output,
                value,
                value,
                query_pos=query_pos,
                attn_masks=[attn_mask, None, None],
                key_padding_mask=key_padding_mask,
                reference_points=reference_points_input,
                spatial_shapes=spatial_shapes,
                level_start_index=level_start_index,
                text=text,
                text_padding_mask=text_padding_mask,
            )
            delta = self.bbox_embed[layer_index](output)
            new_reference_points = (delta + inverse_sigmoid(reference_points)).sigmoid()
            reference_points = new_reference_points.detach()
            states.append(self.norm(output))
            references.append(new_reference_points if self.look_forward_twice else reference_points)
        return torch.stack(states), torch.stack(references)
