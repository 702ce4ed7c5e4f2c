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

from torch import Tensor

from .dino_transformer import DINOTransformer
from .grounding_dino_encoder_decoder import GroundingDINODecoder, GroundingDINOEncoder
from .text_attention import check_text

__all__ = ["GroundingDINOTransformer"]


class GroundingDINOTransformer(DINOTransformer):
    """Text-aware encoder, language-guided query selection and text-aware decoder:
    :class:`~detr_ext.layers.DINOTransformer` (same arguments, parameters and steps) whose
    encoder and decoder also take the text.

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
        super().__init__(
            encoder, decoder, num_feature_levels, two_stage_num_proposals, learnt_init_query
        )

    def forward(  # type: ignore[override]
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
        num_proposals, attn_mask = self.proposal_budget(
            multi_level_feats, dn_query_label, dn_query_bbox, attn_mask
        )
        batch_size = multi_level_feats[0].shape[0]
        check_text(text, text_padding_mask, self.embed_dim, batch_size, type(self).__name__)
        (memory, text_memory), *encoded = self.encode(
            multi_level_feats,
            multi_level_masks,
            multi_level_pos_embeds,
            text=text,
            text_padding_mask=text_padding_mask,
        )
        outputs = self.select_and_decode(
            multi_level_feats,
            memory,
            *encoded,
            num_proposals,
            dn_query_label,
            dn_query_bbox,
            attn_mask,
            head_inputs=(text_memory, text_padding_mask),
            decoder_inputs={"text": text_memory, "text_padding_mask": text_padding_mask},
        )
        return (*outputs, text_memory)
