"""DINO's two-stage deformable transformer (detrex's ``DINOTransformer``, same parameter names
and numerics), shared by the detectors built on :class:`~detr_ext.modeling.DINODetectorBase`
(DINO, Align-DETR).

Flow of :meth:`DINOTransformer.forward`:

1. flatten the ``L`` feature maps into ``N`` tokens, add the sine position embedding and a
   learned per-level embedding, and run the deformable encoder;
2. make one proposal per token (:func:`gen_encoder_output_proposals`: a box centred on the
   pixel with size ``0.05 * 2**level``), score the tokens with
   ``decoder.class_embed[num_layers]`` and refine their boxes with
   ``decoder.bbox_embed[num_layers]``;
3. keep the ``two_stage_num_proposals`` tokens with the highest class logit (max over
   classes; all tokens when there are fewer, e.g. for a 3 x 2000 px image); their refined
   boxes, detached, are the decoder's initial reference boxes (mixed query selection), while
   the content queries are the learned ``tgt_embed``;
4. prepend the denoising queries (if any) and run the decoder.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .deformable_geometry import gen_encoder_output_proposals
from .deformable_transformer import DeformableTransformerBase, level_sizes
from .dino_encoder_decoder import DINOTransformerDecoder, DINOTransformerEncoder

__all__ = ["DINOTransformer"]


class DINOTransformer(DeformableTransformerBase):
    """Encoder, two-stage query selection and decoder of DINO.

    Args:
        encoder: a :class:`DINOTransformerEncoder`.
        decoder: a :class:`DINOTransformerDecoder`; the detector sets its ``class_embed`` /
            ``bbox_embed`` (``num_layers + 1`` heads each).
        num_feature_levels: number of feature maps ``L``; must match encoder and decoder.
        two_stage_num_proposals: proposals kept as decoder queries (DINO's ``num_queries``).
        learnt_init_query: content queries from the learned ``tgt_embed`` (DINO's mixed query
            selection); if False, the selected encoder tokens (detached) are the queries.
    """

    def __init__(
        self,
        encoder: DINOTransformerEncoder,
        decoder: DINOTransformerDecoder,
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
                    f"{type(self).__name__}: expected the {part} to have num_feature_levels="
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

    def forward(
        self,
        multi_level_feats: list[Tensor],
        multi_level_masks: list[Tensor],
        multi_level_pos_embeds: list[Tensor],
        dn_query_label: Tensor | None = None,
        dn_query_bbox: Tensor | None = None,
        attn_mask: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Encode, select the top proposals and decode.

        Args:
            multi_level_feats: ``L`` maps ``[B, C, H_l, W_l]``.
            multi_level_masks: ``L`` masks ``[B, H_l, W_l]`` bool, True on padding.
            multi_level_pos_embeds: ``L`` embeddings ``[B, C, H_l, W_l]``.
            dn_query_label: ``[B, P, C]`` denoising content queries, or None.
            dn_query_bbox: ``[B, P, 4]`` denoising boxes (``inverse_sigmoid`` space), or None.
            attn_mask: ``[P + Q, P + Q]`` bool decoder self-attention mask, or None.

        Returns:
            ``(states, init_reference, references, enc_states, enc_boxes)``:
            ``[num_layers, B, P + Q, C]`` decoder outputs, ``[B, P + Q, 4]`` initial
            reference boxes, ``[num_layers, B, P + Q, 4]`` refined boxes, ``[B, Q, C]``
            selected encoder tokens (after ``enc_output`` and its norm) and ``[B, Q, 4]``
            their boxes (sigmoid, with gradient), where ``Q = min(two_stage_num_proposals, N)``
            for the ``N`` positions of the feature maps.
        """
        num_proposals, attn_mask = self.proposal_budget(
            multi_level_feats, dn_query_label, dn_query_bbox, attn_mask
        )
        encoded = self.encode(multi_level_feats, multi_level_masks, multi_level_pos_embeds)
        return self.select_and_decode(
            multi_level_feats, *encoded, num_proposals, dn_query_label, dn_query_bbox, attn_mask
        )

    def proposal_budget(
        self,
        multi_level_feats: Sequence[Tensor],
        dn_query_label: Tensor | None,
        dn_query_bbox: Tensor | None,
        attn_mask: Tensor | None,
    ) -> tuple[int, Tensor | None]:
        """Check the inputs of :meth:`forward`; the number of proposals ``Q`` and the
        self-attention mask cut to ``P + Q`` queries.

        A tiny or extremely elongated image (e.g. 3 x 2000 px) has fewer feature positions
        ``N`` than ``two_stage_num_proposals``: all ``N`` are kept rather than fail.
        """
        name = type(self).__name__
        decoder = self.decoder
        if decoder.class_embed is None or decoder.bbox_embed is None:
            raise RuntimeError(
                f"{name}: decoder.class_embed / decoder.bbox_embed are not set; the detector "
                "must assign its heads (num_layers + 1 each) to the decoder"
            )
        if (dn_query_label is None) != (dn_query_bbox is None):
            raise ValueError(
                f"{name}: expected dn_query_label and dn_query_bbox both given or both None"
            )
        if not multi_level_feats:
            raise ValueError(f"{name}: expected at least one feature map, got 0")
        num_tokens = sum(feat.shape[-2] * feat.shape[-1] for feat in multi_level_feats)
        num_proposals = min(self.two_stage_num_proposals, num_tokens)
        if attn_mask is not None and num_proposals < self.two_stage_num_proposals:
            # The mask is [P + Q, P + Q] with the Q matching queries last; dropping the last
            # rows / columns keeps every remaining query's visibility unchanged.
            num_dn = 0 if dn_query_label is None else dn_query_label.shape[1]
            num_queries = num_dn + num_proposals
            attn_mask = attn_mask[:num_queries, :num_queries]
        return num_proposals, attn_mask

    def select_and_decode(
        self,
        multi_level_feats: Sequence[Tensor],
        memory: Tensor,
        mask_flatten: Tensor,
        spatial_shapes: Tensor,
        level_start_index: Tensor,
        valid_ratios: Tensor,
        num_proposals: int,
        dn_query_label: Tensor | None,
        dn_query_bbox: Tensor | None,
        attn_mask: Tensor | None,
        head_inputs: tuple[Tensor | None, ...] = (),
        decoder_inputs: dict[str, Tensor | None] | None = None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Steps 2-4 of the module docs on the encoder output (:meth:`encode`); returns what
        :meth:`forward` does. A subclass's extra inputs go to the encoder-proposal class head
        after the tokens (``head_inputs``) and to the decoder as keywords
        (``decoder_inputs``), e.g. Grounding DINO's text memory."""
        decoder = self.decoder
        batch_size = memory.shape[0]
        output_memory, output_proposals = gen_encoder_output_proposals(
            memory, mask_flatten, level_sizes(multi_level_feats)
        )
        output_memory = self.enc_output_norm(self.enc_output(output_memory))
        enc_outputs_class = decoder.class_embed[decoder.num_layers](output_memory, *head_inputs)
        enc_outputs_coord_unact = (
            decoder.bbox_embed[decoder.num_layers](output_memory) + output_proposals
        )
        # The tokens whose best class (Grounding DINO: best text token) logit is highest.
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
            attn_mask=attn_mask,
            **(decoder_inputs or {}),
        )
        return states, init_reference, references, enc_states, topk_coords_unact.sigmoid()
