"""The Deformable DETR transformer: multi-scale inputs -> encoder -> queries -> decoder.

It flattens the feature levels into one sequence, encodes it with deformable self-attention,
builds the decoder queries and their reference points, and decodes. The queries come either
from a learned embedding (one-stage: the reference point is a linear map of the positional
query) or, for two-stage models, from the top-scoring encoder proposals (one box per
encoder position, refined by the proposal heads).

The numerics follow detrex's ``DeformableDetrTransformer`` step for step (reference points
with valid ratios, proposal generation and masking, top-k selection, proposal embedding), and
parameter names match its state dict.
"""

from __future__ import annotations

import torch
from torch import nn

from detr_ext.layers import MultiScaleDeformableAttention, get_sine_pos_embed

from .encoder_decoder import DeformableDetrTransformerDecoder, DeformableDetrTransformerEncoder

__all__ = ["DeformableDetrTransformer"]

# Proposal width/height at level 0 (normalized); it doubles with every level.
PROPOSAL_BASE_SIZE = 0.05
# Proposals whose coordinates leave (0.01, 0.99) are dropped (their logits would overflow).
PROPOSAL_VALID_RANGE = (0.01, 0.99)


class DeformableDetrTransformer(nn.Module):
    """Encoder, query construction and decoder of Deformable DETR.

    Args:
        encoder: a :class:`DeformableDetrTransformerEncoder`.
        decoder: a :class:`DeformableDetrTransformerDecoder`; for ``as_two_stage`` the detector
            must attach ``decoder.class_embed`` and ``decoder.bbox_embed`` with
            ``decoder.num_layers + 1`` heads each (the last scores the encoder proposals).
        num_feature_levels: feature levels ``L``.
        as_two_stage: build the queries from the top encoder proposals.
        two_stage_num_proposals: number of proposals kept (the number of queries).
    """

    def __init__(
        self,
        encoder: DeformableDetrTransformerEncoder,
        decoder: DeformableDetrTransformerDecoder,
        num_feature_levels: int = 4,
        as_two_stage: bool = False,
        two_stage_num_proposals: int = 300,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.num_feature_levels = num_feature_levels
        self.as_two_stage = as_two_stage
        self.two_stage_num_proposals = two_stage_num_proposals
        self.embed_dim = encoder.embed_dim
        if decoder.embed_dim != self.embed_dim:
            raise ValueError(
                "DeformableDetrTransformer: encoder and decoder must have the same embed_dim, "
                f"got {self.embed_dim} and {decoder.embed_dim}"
            )

        self.level_embeds = nn.Parameter(torch.empty(num_feature_levels, self.embed_dim))
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
        for parameter in self.parameters():
            if parameter.dim() > 1:
                nn.init.xavier_uniform_(parameter)
        for module in self.modules():
            if isinstance(module, MultiScaleDeformableAttention):
                module.init_weights()
        if not self.as_two_stage:
            nn.init.xavier_normal_(self.reference_points.weight, gain=1.0)
            nn.init.constant_(self.reference_points.bias, 0.0)
        nn.init.normal_(self.level_embeds)

    # ------------------------------------------------------------------ geometry

    @staticmethod
    def get_valid_ratio(mask: torch.Tensor) -> torch.Tensor:
        """Fraction of unpadded columns and rows of a padded map.

        Args:
            mask: ``[B, H, W]`` bool, True at padding (padding is at the right and bottom).

        Returns:
            ``[B, 2]`` float (valid_w / W, valid_h / H).
        """
        _, height, width = mask.shape
        valid_height = torch.sum(~mask[:, :, 0], 1)
        valid_width = torch.sum(~mask[:, 0, :], 1)
        return torch.stack([valid_width.float() / width, valid_height.float() / height], -1)

    @staticmethod
    def get_reference_points(
        spatial_shapes: torch.Tensor | list[tuple[int, int]],
        valid_ratios: torch.Tensor,
        device: torch.device | str,
    ) -> torch.Tensor:
        """Reference point of every encoder position, as seen on every level.

        The point of pixel ``(i, j)`` of a level is its center ``((j + 0.5) / valid_w,
        (i + 0.5) / valid_h)``, normalized by that level's valid size, then scaled by each
        level's valid ratio to land on the same image location in every padded level.

        Args:
            spatial_shapes: ``[L, 2]`` (H, W) per level.
            valid_ratios: ``[B, L, 2]`` (w, h) valid fractions.
            device: device of the result.

        Returns:
            ``[B, N, L, 2]`` with ``N = sum(H * W)``, (x, y) in padded-map coordinates of
            each level.
        """
        reference_points_per_level = []
        for level, (height, width) in enumerate(spatial_shapes):
            height, width = int(height), int(width)
            ref_y, ref_x = torch.meshgrid(
                torch.linspace(0.5, height - 0.5, height, dtype=torch.float32, device=device),
                torch.linspace(0.5, width - 0.5, width, dtype=torch.float32, device=device),
                indexing="ij",
            )
            ref_y = ref_y.reshape(-1)[None] / (valid_ratios[:, None, level, 1] * height)
            ref_x = ref_x.reshape(-1)[None] / (valid_ratios[:, None, level, 0] * width)
            reference_points_per_level.append(torch.stack((ref_x, ref_y), -1))
        reference_points = torch.cat(reference_points_per_level, 1)
        return reference_points[:, :, None] * valid_ratios[:, None]

    def gen_encoder_output_proposals(
        self,
        memory: torch.Tensor,
        memory_padding_mask: torch.Tensor,
        spatial_shapes: torch.Tensor | list[tuple[int, int]],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One box proposal per encoder position, and the memory that scores them.

        The proposal at pixel ``(i, j)`` of level ``l`` is centered at
        ``((j + 0.5) / valid_w, (i + 0.5) / valid_h)`` with width and height
        ``0.05 * 2**l``. Proposals on padding, or with any coordinate outside (0.01, 0.99),
        get logit ``inf`` and zero memory.

        Args:
            memory: ``[B, N, C]`` encoder output.
            memory_padding_mask: ``[B, N]`` bool, True at padding.
            spatial_shapes: ``[L, 2]`` (H, W) per level.

        Returns:
            ``(output_memory, output_proposals)``: ``[B, N, C]`` masked memory passed through
            ``enc_output`` and ``enc_output_norm``, and ``[B, N, 4]`` proposal boxes as logits
            (inverse sigmoid of normalized cxcywh).
        """
        batch = memory.shape[0]
        proposals = []
        start = 0
        for level, (height, width) in enumerate(spatial_shapes):
            height, width = int(height), int(width)
            level_mask = memory_padding_mask[:, start : start + height * width].view(
                batch, height, width, 1
            )
            valid_height = torch.sum(~level_mask[:, :, 0, 0], 1)
            valid_width = torch.sum(~level_mask[:, 0, :, 0], 1)

            grid_y, grid_x = torch.meshgrid(
                torch.linspace(0, height - 1, height, dtype=torch.float32, device=memory.device),
                torch.linspace(0, width - 1, width, dtype=torch.float32, device=memory.device),
                indexing="ij",
            )
            grid = torch.cat([grid_x.unsqueeze(-1), grid_y.unsqueeze(-1)], -1)  # [H, W, 2]
            scale = torch.cat([valid_width.unsqueeze(-1), valid_height.unsqueeze(-1)], 1)
            grid = (grid.unsqueeze(0).expand(batch, -1, -1, -1) + 0.5) / scale.view(batch, 1, 1, 2)
            size = torch.ones_like(grid) * PROPOSAL_BASE_SIZE * (2.0**level)
            proposals.append(torch.cat((grid, size), -1).view(batch, -1, 4))
            start += height * width

        output_proposals = torch.cat(proposals, 1)
        low, high = PROPOSAL_VALID_RANGE
        proposals_valid = ((output_proposals > low) & (output_proposals < high)).all(
            -1, keepdim=True
        )
        output_proposals = torch.log(output_proposals / (1 - output_proposals))
        output_proposals = output_proposals.masked_fill(
            memory_padding_mask.unsqueeze(-1), float("inf")
        )
        output_proposals = output_proposals.masked_fill(~proposals_valid, float("inf"))

        output_memory = memory.masked_fill(memory_padding_mask.unsqueeze(-1), 0.0)
        output_memory = output_memory.masked_fill(~proposals_valid, 0.0)
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

    def flatten_levels(
        self,
        multi_level_feats: list[torch.Tensor],
        multi_level_masks: list[torch.Tensor],
        multi_level_pos_embeds: list[torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Concatenate the levels into sequences.

        Returns:
            ``(feats [B, N, C], masks [B, N], pos [B, N, C], spatial_shapes [L, 2] int64,
            level_start_index [L] int64)``; ``pos`` includes the level embedding.
        """
        if not len(multi_level_feats) == len(multi_level_masks) == len(multi_level_pos_embeds):
            raise ValueError(
                "DeformableDetrTransformer: expected as many masks and position embeddings as "
                f"feature maps, got {len(multi_level_feats)} feature maps, "
                f"{len(multi_level_masks)} masks, {len(multi_level_pos_embeds)} embeddings"
            )
        if len(multi_level_feats) != self.num_feature_levels:
            raise ValueError(
                f"DeformableDetrTransformer: expected {self.num_feature_levels} feature levels, "
                f"got {len(multi_level_feats)}"
            )
        feats, masks, pos_embeds, shapes = [], [], [], []
        for level, (feat, mask, pos_embed) in enumerate(
            zip(multi_level_feats, multi_level_masks, multi_level_pos_embeds, strict=True)
        ):
            shapes.append(feat.shape[-2:])
            feats.append(feat.flatten(2).transpose(1, 2))
            masks.append(mask.flatten(1))
            pos_embeds.append(
                pos_embed.flatten(2).transpose(1, 2) + self.level_embeds[level].view(1, 1, -1)
            )
        feat = feats[0]
        spatial_shapes = torch.as_tensor(
            [tuple(shape) for shape in shapes], dtype=torch.long, device=feat.device
        )
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
        feat_flatten, mask_flatten, pos_flatten, spatial_shapes, level_start_index = (
            self.flatten_levels(multi_level_feats, multi_level_masks, multi_level_pos_embeds)
        )
        valid_ratios = torch.stack([self.get_valid_ratio(m) for m in multi_level_masks], 1)
        encoder_reference_points = self.get_reference_points(
            spatial_shapes, valid_ratios, device=feat_flatten.device
        )
        memory = self.encoder(
            feat_flatten,
            query_pos=pos_flatten,
            padding_mask=mask_flatten,
            reference_points=encoder_reference_points,
            spatial_shapes=spatial_shapes,
            level_start_index=level_start_index,
        )

        batch, _, channels = memory.shape
        enc_outputs_class = enc_outputs_coord_unact = None
        if self.as_two_stage:
            query, query_pos, reference_points, enc_outputs_class, enc_outputs_coord_unact = (
                self.select_proposals(memory, mask_flatten, spatial_shapes)
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
        spatial_shapes: torch.Tensor,
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

        num_proposals = self.two_stage_num_proposals
        if num_proposals > enc_outputs_class.shape[1]:
            raise ValueError(
                f"DeformableDetrTransformer: two_stage_num_proposals={num_proposals} exceeds "
                f"the {enc_outputs_class.shape[1]} encoder positions"
            )
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
