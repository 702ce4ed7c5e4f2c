"""Deformable DETR's encoder and decoder stacks (Zhu et al., ICLR 2021).

Both are post-norm stacks of :func:`~detr_ext.layers.deformable_transformer_layer`:

- encoder layer: deformable self-attention over all levels, norm, FFN, norm (the encoder is
  the library's :class:`~detr_ext.layers.DeformableTransformerEncoder`);
- decoder layer: multi-head self-attention among the queries, norm, deformable
  cross-attention into the encoder memory, norm, FFN, norm.

Module and parameter names follow detrex (``layers.N.attentions.{0,1}``, ``ffns.0``,
``norms.{0,1,2}``) so detrex checkpoints load unchanged. All tensors are batch-first.
"""

from __future__ import annotations

import torch
from torch import nn

from .box_ops import inverse_sigmoid
from .deformable_transformer import DeformableTransformerEncoder, deformable_transformer_layer
from .transformer import TransformerLayerSequence

__all__ = [
    "DeformableDetrTransformerDecoder",
    "DeformableDetrTransformerEncoder",
]


class DeformableDetrTransformerEncoder(DeformableTransformerEncoder):
    """Deformable DETR's encoder: :class:`~detr_ext.layers.DeformableTransformerEncoder`
    (a stack of deformable self-attention layers over the flattened multi-scale features),
    under the detrex name. Takes the same arguments; ``post_norm`` is off in Deformable DETR.
    """


class DeformableDetrTransformerDecoder(TransformerLayerSequence):
    """Stack of decoder layers, with optional iterative box refinement.

    The detector attaches its heads after construction, as in detrex: ``bbox_embed`` (one box
    MLP per layer) turns on iterative refinement, where each layer's box delta is added to the
    logit of the previous reference and the result, detached, becomes the next reference;
    ``class_embed`` is attached for two-stage models, where the transformer uses the extra
    head at index ``num_layers`` to score the encoder proposals.

    Args:
        embed_dim: model width ``C``.
        num_heads: attention heads (self- and cross-attention).
        feedforward_dim: hidden width of the FFN.
        attn_dropout: dropout on the attention weights of self-attention and on the output of
            the deformable cross-attention.
        ffn_dropout: dropout inside the FFN.
        num_layers: number of layers.
        return_intermediate: return the states and references of every layer, stacked.
        num_feature_levels: feature levels ``L`` of the memory.
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
        return_intermediate: bool = True,
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
            decoder=True,
        )
        super().__init__(transformer_layers=layer, num_layers=num_layers)
        self.embed_dim = embed_dim
        self.return_intermediate = return_intermediate
        self.bbox_embed: nn.ModuleList | None = None
        self.class_embed: nn.ModuleList | None = None

    def forward(
        self,
        query: torch.Tensor,
        query_pos: torch.Tensor,
        memory: torch.Tensor,
        memory_padding_mask: torch.Tensor,
        reference_points: torch.Tensor,
        valid_ratios: torch.Tensor,
        spatial_shapes: torch.Tensor,
        level_start_index: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode the queries.

        Args:
            query: ``[B, Q, C]`` content queries.
            query_pos: ``[B, Q, C]`` positional queries.
            memory: ``[B, N, C]`` encoder output.
            memory_padding_mask: ``[B, N]`` bool, True at padded positions.
            reference_points: ``[B, Q, 2]`` normalized (x, y) points or ``[B, Q, 4]``
                normalized (cx, cy, w, h) boxes, relative to the valid (unpadded) image.
            valid_ratios: ``[B, L, 2]`` valid fraction (w, h) of each level.
            spatial_shapes: ``[L, 2]`` (H, W) per level.
            level_start_index: ``[L]`` offset of each level in ``N``.

        Returns:
            ``(states, references)``: with ``return_intermediate``, ``[num_layers, B, Q, C]``
            and ``[num_layers, B, Q, 2 or 4]`` (the reference after each layer; unchanged
            without refinement); otherwise those of the last layer only.
        """
        output = query
        intermediate_states = []
        intermediate_references = []
        for layer_index, layer in enumerate(self.layers):
            # References are relative to the valid image; the sampler works on the padded map.
            if reference_points.shape[-1] == 4:
                scale = torch.cat([valid_ratios, valid_ratios], -1)[:, None]
            else:
                scale = valid_ratios[:, None]
            reference_points_input = reference_points[:, :, None] * scale

            output = layer(
                output,
                value=memory,
                query_pos=query_pos,
                key_padding_mask=memory_padding_mask,
                reference_points=reference_points_input,
                spatial_shapes=spatial_shapes,
                level_start_index=level_start_index,
            )

            if self.bbox_embed is not None:
                delta = self.bbox_embed[layer_index](output)
                if reference_points.shape[-1] == 4:
                    refined = delta + inverse_sigmoid(reference_points)
                else:
                    # A point reference becomes a box: only the center gets a prior.
                    refined = torch.cat(
                        [delta[..., :2] + inverse_sigmoid(reference_points), delta[..., 2:]], -1
                    )
                reference_points = refined.sigmoid().detach()

            if self.return_intermediate:
                intermediate_states.append(output)
                intermediate_references.append(reference_points)

        if self.return_intermediate:
            return torch.stack(intermediate_states), torch.stack(intermediate_references)
        return output, reference_points
