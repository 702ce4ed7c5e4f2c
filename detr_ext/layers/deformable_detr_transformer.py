"""The Deformable DETR transformer: multi-scale inputs -> encoder -> queries -> decoder.

It flattens the feature levels into one sequence and encodes it with deformable
self-attention (both in :class:`~detr_ext.layers.DeformableTransformerBase`), then builds the
decoder queries and their reference points, and decodes. The queries come either from a
learned embedding (one-stage: the reference point is a linear map of the positional query)
or, for two-stage models, from the top-scoring encoder proposals (one box per encoder
position, refined by the proposal heads).

The numerics follow detrex's ``DeformableDetrTransformer`` step for step (reference points
with valid ratios, proposal generation and masking, top-k selection, proposal embedding), and
parameter names match its state dict.
"""

from __future__ import annotations

import torch
from torch import nn

from .deformable_detr_encoder_decoder import (
    DeformableDetrTransformerDecoder,
    DeformableDetrTransformerEncoder,
)
from .deformable_geometry import (
    gen_encoder_output_proposals,
    get_encoder_reference_points,
    get_valid_ratio,
)
from .deformable_transformer import DeformableTransformerBase, level_sizes
from .position_embedding import get_sine_pos_embed

__all__ = ["DeformableDetrTransformer"]


class DeformableDetrTransformer(DeformableTransformerBase):
    """Encoder, query construction and decoder of Deformable DETR.

    Args:
        encoder: a :class:`DeformableDetrTransformerEncoder`.
        decoder: a :class:`DeformableDetrTransformerDecoder`; for ``as_two_stage`` the detector
            must attach ``decoder.class_embed`` and ``decoder.bbox_embed`` with
            ``decoder.num_layers + 1`` heads each (the last scores the encoder proposals).
        num_feature_levels: feature levels ``L``.
        as_two_stage: build the queries from the top encoder proposals.
        two_stage_num_proposals: number of proposals kept (the number of queries); an image
            with fewer encoder positions keeps all of them.
    """

    def __init__(
        self,
        encoder: DeformableDetrTransformerEncoder,
        decoder: DeformableDetrTransformerDecoder,
        num_feature_levels: int = 4,
        as_two_stage: bool = False,
        two_stage_num_proposals: int = 300,
    ) -> None:
        super().__init__(encoder, decoder, num_feature_levels)
        self.as_two_stage = as_two_stage
        self.two_stage_num_proposals = two_stage_num_proposals
        if as_two_stage:
            self.enc_output = nn.Linear(self.embed_dim, self.embed_dim)
            self.enc_output_norm = nn.LayerNorm(self.embed_dim)
            self.pos_trans = nn.Linear(self.embed_dim * 2, self.embed_dim * 2)
            self.pos_trans_norm = nn.LayerNorm(self.embed_dim * 2)
        else:
            self.reference_points = nn.Linear(self.embed_dim, 2)
        self.init_weights()

    def init_weights(self) -> None:
        """Xavier for all matrices, then the deformable attention's own initialisation."""
        self.init_attention_weights()
        if not self.as_two_stage:
            nn.init.xavier_normal_(self.reference_points.weight, gain=1.0)
            nn.init.constant_(self.reference_points.bias, 0.0)
        nn.init.normal_(self.level_embeds)

    # ------------------------------------------------------------------ geometry

    @staticmethod
    def get_valid_ratio(mask: torch.Tensor) -> torch.Tensor:
        """:func:`~detr_ext.layers.get_valid_ratio`: ``mask [B, H, W]`` (True at padding) ->
        ``[B, 2]`` (valid_w / W, valid_h / H)."""
        return get_valid_ratio(mask)

    @staticmethod
    def get_reference_points(
        spatial_shapes: torch.Tensor | list[tuple[int, int]],
        valid_ratios: torch.Tensor,
        device: torch.device | str,
    ) -> torch.Tensor:
        """:func:`~detr_ext.layers.get_encoder_reference_points`: the reference point of every
        encoder position as seen on every level, ``[B, N, L, 2]``, from ``spatial_shapes
        [L, 2]`` and ``valid_ratios [B, L, 2]``."""
        return get_encoder_reference_points(spatial_shapes, valid_ratios, device)

    def gen_encoder_output_proposals(
        self,
        memory: torch.Tensor,
        memory_padding_mask: torch.Tensor,
        spatial_shapes: torch.Tensor | list[tuple[int, int]],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One box proposal per encoder position, and the memory that scores them.

        Args: as :func:`~detr_ext.layers.gen_encoder_output_proposals` (``memory [B, N, C]``,
        ``memory_padding_mask [B, N]``, ``spatial_shapes [L, 2]``).

        Returns:
            ``(output_memory, output_proposals)``: ``[B, N, C]`` masked memory passed through
            ``enc_output`` and ``enc_output_norm``, and ``[B, N, 4]`` proposal boxes as logits
            (inverse sigmoid of normalized cxcywh; ``inf`` where invalid).
        """
        output_memory, output_proposals = gen_encoder_output_proposals(
            memory, memory_padding_mask, spatial_shapes
        )
        output_memory = self.enc_output_norm(self.enc_output(output_memory))
        return output_memory, output_proposals

    @staticmethod
    def get_proposal_pos_embed(
        proposals: torch.Tensor, num_pos_feats: int = 128, temperature: float = 10000
    ) -> torch.Tensor:
        """Sine embedding of proposal boxes given as logits.

        Args:
            proposals: ``[B, Q, 4]`` unsigmoided cxcywh.

        Returns:
            ``[B, Q, 4 * num_pos_feats]``: the embeddings of cx, cy, w, h, in that order.
        """
        return get_sine_pos_embed(
            proposals.sigmoid(), num_pos_feats, temperature, exchange_xy=False
        )

    # ------------------------------------------------------------------ forward

    def forward(
        self,
        multi_level_feats: list[torch.Tensor],
        multi_level_masks: list[torch.Tensor],
        multi_level_pos_embeds: list[torch.Tensor],
        query_embed: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Encode the feature levels and decode the queries.

        Args:
            multi_level_feats: ``L`` maps ``[B, C, H_l, W_l]``.
            multi_level_masks: ``L`` bool masks ``[B, H_l, W_l]``, True at padding.
            multi_level_pos_embeds: ``L`` position embeddings ``[B, C, H_l, W_l]``.
            query_embed: ``[Q, 2C]`` learned (positional, content) queries; required unless
                ``as_two_stage``.

        Returns:
            ``(states, init_reference, references, enc_class, enc_coord_unact)``:
            decoder states ``[num_layers, B, Q, C]``; initial references ``[B, Q, 2]``
            (one-stage) or ``[B, Q, 4]`` (two-stage); references after each layer
            ``[num_layers, B, Q, 2 or 4]``; for two-stage the class logits ``[B, N, K]`` and
            unsigmoided boxes ``[B, N, 4]`` of all encoder proposals, else None.
        """
        if not self.as_two_stage and query_embed is None:
            raise ValueError(
                "DeformableDetrTransformer: query_embed [num_queries, 2 * embed_dim] is "
                "required when as_two_stage=False, got None"
            )
        memory, mask_flatten, spatial_shapes, level_start_index, valid_ratios = self.encode(
            multi_level_feats, multi_level_masks, multi_level_pos_embeds
        )

        batch, _, channels = memory.shape
        enc_outputs_class = enc_outputs_coord_unact = None
        if self.as_two_stage:
            query, query_pos, reference_points, enc_outputs_class, enc_outputs_coord_unact = (
                self.select_proposals(memory, mask_flatten, level_sizes(multi_level_feats))
            )
        else:
            query_pos, query = torch.split(query_embed, channels, dim=1)
            query_pos = query_pos.unsqueeze(0).expand(batch, -1, -1)
            query = query.unsqueeze(0).expand(batch, -1, -1)
            reference_points = self.reference_points(query_pos).sigmoid()
        init_reference = reference_points

        states, references = self.decoder(
            query,
            query_pos=query_pos,
            memory=memory,
            memory_padding_mask=mask_flatten,
            reference_points=reference_points,
            valid_ratios=valid_ratios,
            spatial_shapes=spatial_shapes,
            level_start_index=level_start_index,
        )
        return states, init_reference, references, enc_outputs_class, enc_outputs_coord_unact

    def select_proposals(
        self,
        memory: torch.Tensor,
        mask_flatten: torch.Tensor,
        spatial_shapes: torch.Tensor | list[tuple[int, int]],
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Two-stage query construction from the top-k encoder proposals.

        Proposals are ranked by the first class logit of the extra head
        ``decoder.class_embed[num_layers]`` (the encoder is trained class-agnostically, with
        every target labelled 0). The kept boxes, detached, are the initial references, and
        their sine embedding through ``pos_trans`` / ``pos_trans_norm`` gives the positional
        and content queries.

        Returns:
            ``(query [B, Q, C], query_pos [B, Q, C], reference_points [B, Q, 4],
            enc_outputs_class [B, N, K], enc_outputs_coord_unact [B, N, 4])``.
        """
        decoder = self.decoder
        if decoder.class_embed is None or decoder.bbox_embed is None:
            raise ValueError(
                "DeformableDetrTransformer: as_two_stage needs decoder.class_embed and "
                "decoder.bbox_embed (set by the detector, with box refinement); got None"
            )
        channels = memory.shape[-1]
        output_memory, output_proposals = self.gen_encoder_output_proposals(
            memory, mask_flatten, spatial_shapes
        )
        enc_outputs_class = decoder.class_embed[decoder.num_layers](output_memory)
        enc_outputs_coord_unact = decoder.bbox_embed[decoder.num_layers](output_memory)
        enc_outputs_coord_unact = enc_outputs_coord_unact + output_proposals

        # A tiny or extremely elongated image (e.g. 3 x 2000 px) has fewer encoder positions
        # than proposals: keep them all rather than fail.
        num_proposals = min(self.two_stage_num_proposals, enc_outputs_class.shape[1])
        topk_index = torch.topk(enc_outputs_class[..., 0], num_proposals, dim=1)[1]
        topk_coords_unact = torch.gather(
            enc_outputs_coord_unact, 1, topk_index.unsqueeze(-1).repeat(1, 1, 4)
        ).detach()
        reference_points = topk_coords_unact.sigmoid()

        num_pos_feats = channels // 2
        if num_pos_feats * 2 != channels or num_pos_feats % 2:
            raise ValueError(
                f"DeformableDetrTransformer: two-stage needs embed_dim divisible by 4, "
                f"got {channels}"
            )
        pos_trans_out = self.pos_trans_norm(
            self.pos_trans(self.get_proposal_pos_embed(topk_coords_unact, num_pos_feats))
        )
        query_pos, query = torch.split(pos_trans_out, channels, dim=2)
        return query, query_pos, reference_points, enc_outputs_class, enc_outputs_coord_unact
