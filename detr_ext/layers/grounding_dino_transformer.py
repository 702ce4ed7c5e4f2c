"""Grounding DINO's transformer: DINO's two-stage deformable transformer with text.

Flow of :meth:`GroundingDINOTransformer.forward`; what differs from
:class:`~detr_ext.layers.DINOTransformer` is marked *so*:

1. flatten the ``L`` feature maps into ``N`` image tokens (sine position + level embedding)
   and run the encoder, which *fuses image and text tokens* and returns both the image
   memory and the *text memory*;
2. make one proposal per image token (:func:`gen_encoder_output_proposals`), *score it
   against every text token* with ``decoder.class_embed[num_layers]`` (a
   :class:`~detr_ext.layers.TokenAlignmentHead`, ``[B, N, T]``) and refine its box with
   ``decoder.bbox_embed[num_layers]``;
3. *language-guided query selection*: keep the ``min(two_stage_num_proposals, N)`` tokens
   whose best token logit (max over ``T``; padded tokens hold ``MASKED_LOGIT``) is highest;
   their refined boxes, detached, are the initial reference boxes, the content queries are
   the learned ``tgt_embed`` (mixed query selection);
4. prepend the denoising queries (if any) and run the decoder, which *cross-attends to the
   text memory* in every layer.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .deformable_geometry import (
    gen_encoder_output_proposals,
    get_encoder_reference_points,
    get_valid_ratio,
)
from .deformable_transformer import DeformableTransformerBase
from .grounding_dino_encoder_decoder import GroundingDINODecoder, GroundingDINOEncoder
from .text_attention import check_text

__all__ = ["GroundingDINOTransformer"]


def _level_sizes(multi_level_feats: Sequence[Tensor]) -> list[tuple[int, int]]:
    """``(H_l, W_l)`` of ``L`` maps ``[B, C, H_l, W_l]``: the values of ``spatial_shapes`` read
    from the shapes rather than from a tensor, so they stay symbolic under ``torch.export``."""
    return [(feat.shape[-2], feat.shape[-1]) for feat in multi_level_feats]


class GroundingDINOTransformer(DeformableTransformerBase):
    """Text-aware encoder, language-guided query selection and text-aware decoder.

    Args:
        encoder: a :class:`~detr_ext.layers.GroundingDINOEncoder`.
        decoder: a :class:`~detr_ext.layers.GroundingDINODecoder`; the detector sets its
            ``class_embed`` (``num_layers + 1`` :class:`~detr_ext.layers.TokenAlignmentHead`)
            and ``bbox_embed``.
        num_feature_levels: number of feature maps ``L``; must match encoder and decoder.
        two_stage_num_proposals: proposals kept as decoder queries.
        learnt_init_query: content queries from the learned ``tgt_embed``; if False, the
            selected encoder tokens (detached) are the queries.
    """

    def __init__(
        self,
        encoder: GroundingDINOEncoder,
        decoder: GroundingDINODecoder,
        num_feature_levels: int = 4,
        two_stage_num_proposals: int = 900,
        learnt_init_query: bool = True,
    ) -> None:
        for part, levels in (
            ("encoder", encoder.num_feature_levels),
            ("decoder", decoder.num_feature_levels),
        ):
            if levels != num_feature_levels:
                raise ValueError(
                    f"GroundingDINOTransformer: expected the {part} to have num_feature_levels="
                    f"{num_feature_levels}, got {levels}"
                )
        super().__init__(encoder, decoder, num_feature_levels)
        self.two_stage_num_proposals = two_stage_num_proposals
        self.learnt_init_query = learnt_init_query
        if learnt_init_query:
            self.tgt_embed = nn.Embedding(two_stage_num_proposals, self.embed_dim)
        self.enc_output = nn.Linear(self.embed_dim, self.embed_dim)
        self.enc_output_norm = nn.LayerNorm(self.embed_dim)
        self.init_weights()

    def encode_with_text(
        self,
        multi_level_feats: Sequence[Tensor],
        multi_level_masks: Sequence[Tensor],
        multi_level_pos_embeds: Sequence[Tensor],
        text: Tensor,
        text_padding_mask: Tensor | None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Flatten the levels and run the text-aware encoder (the text counterpart of
        :meth:`DeformableTransformerBase.encode`).

        Returns:
            ``(memory [B, N, C], text_memory [B, T, C], mask_flatten [B, N],
            spatial_shapes [L, 2], level_start_index [L], valid_ratios [B, L, 2])``.
        """
        feat_flatten, mask_flatten, pos_flatten, spatial_shapes, level_start_index = (
            self.flatten_levels(multi_level_feats, multi_level_masks, multi_level_pos_embeds)
        )
        valid_ratios = torch.stack([get_valid_ratio(mask) for mask in multi_level_masks], 1)
        reference_points = get_encoder_reference_points(
            _level_sizes(multi_level_feats), valid_ratios, device=feat_flatten.device
        )
        memory, text_memory = self.encoder(
            feat_flatten,
            query_pos=pos_flatten,
            key_padding_mask=mask_flatten,
            reference_points=reference_points,
            spatial_shapes=spatial_shapes,
            level_start_index=level_start_index,
            text=text,
            text_padding_mask=text_padding_mask,
        )
        return (
            memory,
            text_memory,
            mask_flatten,
            spatial_shapes,
            level_start_index,
            valid_ratios,
        )

    def forward(
        self,
        multi_level_feats: list[Tensor],
        multi_level_masks: list[Tensor],
        multi_level_pos_embeds: list[Tensor],
        text: Tensor,
        text_padding_mask: Tensor | None,
        dn_query_label: Tensor | None = None,
        dn_query_bbox: Tensor | None = None,
        attn_mask: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Encode image and text, select the top proposals by their text logits and decode.

        Args:
            multi_level_feats: ``L`` maps ``[B, C, H_l, W_l]``.
            multi_level_masks: ``L`` masks ``[B, H_l, W_l]`` bool, True on padding.
            multi_level_pos_embeds: ``L`` embeddings ``[B, C, H_l, W_l]``.
            text: ``[B, T, C]`` text features, already projected to ``embed_dim``.
            text_padding_mask: ``[B, T]`` bool, True on padded tokens, or None.
            dn_query_label: ``[B, P, C]`` denoising content queries, or None.
            dn_query_bbox: ``[B, P, 4]`` denoising boxes (``inverse_sigmoid`` space), or None.
            attn_mask: ``[P + Q, P + Q]`` bool decoder self-attention mask, or None.

        Returns:
            ``(states, init_reference, references, enc_states, enc_boxes, text_memory)``:
            as :meth:`DINOTransformer.forward` (``[num_layers, B, P + Q, C]``,
            ``[B, P + Q, 4]``, ``[num_layers, B, P + Q, 4]``, ``[B, Q, C]``, ``[B, Q, 4]`` with
            ``Q = min(two_stage_num_proposals, N)``), plus the fused text ``[B, T, C]`` that
            the detector's alignment heads score the queries against.
        """
        decoder = self.decoder
        if decoder.class_embed is None or decoder.bbox_embed is None:
            raise RuntimeError(
                "GroundingDINOTransformer: decoder.class_embed / decoder.bbox_embed are not "
                "set; the detector must assign its heads (num_layers + 1 each) to the decoder"
            )
        if (dn_query_label is None) != (dn_query_bbox is None):
            raise ValueError(
                "GroundingDINOTransformer: expected dn_query_label and dn_query_bbox both "
                "given or both None"
            )
        if not multi_level_feats:
            raise ValueError("GroundingDINOTransformer: expected at least one feature map, got 0")
        check_text(
            text,
            text_padding_mask,
            self.embed_dim,
            multi_level_feats[0].shape[0],
            "GroundingDINOTransformer",
        )
        num_tokens = sum(feat.shape[-2] * feat.shape[-1] for feat in multi_level_feats)
        # Fewer feature positions than proposals (a tiny or elongated image): keep them all.
        num_proposals = min(self.two_stage_num_proposals, num_tokens)
        if attn_mask is not None and num_proposals < self.two_stage_num_proposals:
            # The Q matching queries come last in the [P + Q, P + Q] mask: dropping the last
            # rows / columns keeps every remaining query's visibility unchanged.
            num_dn = 0 if dn_query_label is None else dn_query_label.shape[1]
            num_queries = num_dn + num_proposals
            attn_mask = attn_mask[:num_queries, :num_queries]
        memory, text_memory, mask_flatten, spatial_shapes, level_start_index, valid_ratios = (
            self.encode_with_text(
                multi_level_feats,
                multi_level_masks,
                multi_level_pos_embeds,
                text,
                text_padding_mask,
            )
        )
        batch_size = memory.shape[0]

        output_memory, output_proposals = gen_encoder_output_proposals(
            memory, mask_flatten, _level_sizes(multi_level_feats)
        )
        output_memory = self.enc_output_norm(self.enc_output(output_memory))
        enc_outputs_class = decoder.class_embed[decoder.num_layers](
            output_memory, text_memory, text_padding_mask
        )  # [B, N, T]
        enc_outputs_coord_unact = (
            decoder.bbox_embed[decoder.num_layers](output_memory) + output_proposals
        )
        # Language-guided query selection: a token's score is its best match over the prompt.
        topk_index = torch.topk(enc_outputs_class.max(-1)[0], num_proposals, dim=1)[1]
        topk_coords_unact = torch.gather(
            enc_outputs_coord_unact, 1, topk_index.unsqueeze(-1).repeat(1, 1, 4)
        )
        reference_points = topk_coords_unact.detach().sigmoid()
        enc_states = torch.gather(
            output_memory, 1, topk_index.unsqueeze(-1).repeat(1, 1, output_memory.shape[-1])
        )
        if self.learnt_init_query:
            target = self.tgt_embed.weight[None, :num_proposals].repeat(batch_size, 1, 1)
        else:
            target = enc_states.detach()
        if dn_query_label is not None:
            reference_points = torch.cat([dn_query_bbox.sigmoid(), reference_points], 1)
            target = torch.cat([dn_query_label, target], 1)
        init_reference = reference_points

        states, references = decoder(
            target,
            memory,
            key_padding_mask=mask_flatten,
            reference_points=reference_points,
            valid_ratios=valid_ratios,
            spatial_shapes=spatial_shapes,
            level_start_index=level_start_index,
            text=text_memory,
            text_padding_mask=text_padding_mask,
            attn_mask=attn_mask,
        )
        return (
            states,
            init_reference,
            references,
            enc_states,
            topk_coords_unact.sigmoid(),
            text_memory,
        )
