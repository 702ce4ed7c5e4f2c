"""DINO's deformable encoder and its box-refining decoder (detrex's ``DINOTransformerEncoder``
and ``DINOTransformerDecoder``, same parameter names and numerics), shared by the detectors
built on :class:`~detr_ext.modeling.DINODetectorBase` (DINO, Align-DETR).

Encoder layer: deformable self-attention, norm, FFN, norm (post-norm; the encoder is the
library's :class:`~detr_ext.layers.DeformableTransformerEncoder`). Decoder layer: self
attention over all queries (denoising + matching, under the denoising mask), norm, deformable
cross attention to the encoder memory, norm, FFN, norm. The decoder's query positional
embedding is ``ref_point_head(get_sine_pos_embed(reference box))`` and, after every layer,
``bbox_embed[layer]`` refines the reference box ("look forward twice", see
:class:`DINOTransformerDecoder`).
"""

from __future__ import annotations

from functools import partial

import torch
from torch import Tensor, nn

from .box_ops import inverse_sigmoid
from .deformable_transformer import DeformableTransformerEncoder, deformable_transformer_layer
from .mlp import MLP
from .position_embedding import get_sine_pos_embed
from .transformer import TransformerLayerSequence

__all__ = ["DINOTransformerDecoder", "DINOTransformerEncoder"]


class DINOTransformerEncoder(DeformableTransformerEncoder):
    """DINO's encoder: :class:`~detr_ext.layers.DeformableTransformerEncoder` (a stack of
    post-norm deformable self-attention layers over the flattened feature maps) under the
    detrex name. Takes the same arguments.
    """


class DINOTransformerDecoder(TransformerLayerSequence):
    """Deformable decoder with iterative box refinement and "look forward twice".

    ``class_embed`` and ``bbox_embed`` (``num_layers + 1`` heads each; the last pair scores the
    encoder proposals) are owned by the detector, which assigns them here after construction,
    as in detrex (so the state dict lists them under both names).

    Per layer ``i`` with input reference boxes ``r_i`` (normalized ``cxcywh``, detached):
    the layer output ``h_i`` gives ``r_{i+1} = sigmoid(bbox_embed[i](h_i) +
    inverse_sigmoid(r_i))``; ``r_{i+1}`` is returned *with* its gradient (look forward twice:
    the detector's prediction at layer ``i + 1`` then also trains ``bbox_embed[i]``) and fed
    to the next layer detached.

    Args:
        embed_dim: model width ``C``.
        num_heads: attention heads.
        feedforward_dim: hidden width of the FFN.
        attn_dropout: dropout of both attentions.
        ffn_dropout: dropout inside the FFN.
        num_layers: number of layers.
        num_feature_levels: levels ``L`` of the encoder memory.
        num_points: sampling points per head and level.
        look_forward_twice: return the refined boxes with gradient (DINO) rather than detached.
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
            raise ValueError(f"{type(self).__name__}: expected an even embed_dim, got {embed_dim}")
        layer = self.build_layer(
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

    # What a subclass with other layers changes: the layer builder (same arguments), its
    # number of attentions (the self-attention comes first and takes ``attn_mask``; the others
    # get None) and the check of the extra keyword inputs :meth:`forward` passes to each layer.
    build_layer = staticmethod(partial(deformable_transformer_layer, decoder=True))
    num_attentions = 2  # self-attention, deformable cross-attention

    def check_layer_inputs(self, query: Tensor) -> None:
        """Check the extra keyword inputs of a subclass's layers (DINO's take none)."""

    def forward(
        self,
        query: Tensor,
        value: Tensor,
        key_padding_mask: Tensor,
        reference_points: Tensor,
        valid_ratios: Tensor,
        spatial_shapes: Tensor,
        level_start_index: Tensor,
        attn_mask: Tensor | None = None,
        **layer_inputs: Tensor | None,
    ) -> tuple[Tensor, Tensor]:
        """Decode the queries, refining their reference boxes layer by layer.

        Args:
            query: ``[B, T, C]`` content queries (denoising queries first, if any).
            value: ``[B, N, C]`` encoder memory.
            key_padding_mask: ``[B, N]`` bool, True on padding.
            reference_points: ``[B, T, 4]`` initial boxes, normalized ``cxcywh``.
            valid_ratios: ``[B, L, 2]`` (w, h) fraction of each level that is not padding.
            spatial_shapes: ``[L, 2]`` (H_l, W_l).
            level_start_index: ``[L]``.
            attn_mask: ``[T, T]`` bool self-attention mask (True = blocked), or None.
            layer_inputs: a subclass's extra inputs to every layer (none here), checked by
                :meth:`check_layer_inputs`.

        Returns:
            ``(states, references)``: ``[num_layers, B, T, C]`` outputs after the final
            ``norm``, and ``[num_layers, B, T, 4]`` refined boxes (sigmoid space).
        """
        name = type(self).__name__
        if self.bbox_embed is None:
            raise RuntimeError(
                f"{name}: bbox_embed is not set; the detector must assign its box heads "
                "(decoder.bbox_embed = ...) before the decoder runs"
            )
        if reference_points.dim() != 3 or reference_points.shape[-1] != 4:
            raise ValueError(
                f"{name}: expected reference_points [B, T, 4] (cxcywh), got "
                f"{tuple(reference_points.shape)}"
            )
        self.check_layer_inputs(query, **layer_inputs)
        attn_masks = [attn_mask] + [None] * (self.num_attentions - 1)
        output = query
        states, references = [], []
        box_ratios = torch.cat([valid_ratios, valid_ratios], -1)[:, None]  # [B, 1, L, 4]
        for layer_index, layer in enumerate(self.layers):
            # Boxes in the frame of each level's valid (unpadded) area: [B, T, L, 4].
            reference_points_input = reference_points[:, :, None] * box_ratios
            query_sine_embed = get_sine_pos_embed(
                reference_points_input[:, :, 0, :], num_pos_feats=self.embed_dim // 2
            )
            query_pos = self.ref_point_head(query_sine_embed.to(output.dtype))
            output = layer(
                output,
                value,
                value,
                query_pos=query_pos,
                attn_masks=attn_masks,
                key_padding_mask=key_padding_mask,
                reference_points=reference_points_input,
                spatial_shapes=spatial_shapes,
                level_start_index=level_start_index,
                **layer_inputs,
            )
            delta = self.bbox_embed[layer_index](output)
            new_reference_points = (delta + inverse_sigmoid(reference_points)).sigmoid()
            reference_points = new_reference_points.detach()
            states.append(self.norm(output))
            references.append(new_reference_points if self.look_forward_twice else reference_points)
        return torch.stack(states), torch.stack(references)
