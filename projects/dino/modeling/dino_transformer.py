"""DINO's two-stage deformable transformer (detrex's ``DINOTransformer``, same parameter names
and numerics).

Flow of :meth:`DINOTransformer.forward`:

1. flatten the ``L`` feature maps into ``N`` tokens, add the sine position embedding and a
   learned per-level embedding, and run the deformable encoder;
2. make one proposal per token (:func:`gen_encoder_output_proposals`: a box centred on the
   pixel with size ``0.05 * 2**level``), score the tokens with
   ``decoder.class_embed[num_layers]`` and refine their boxes with
   ``decoder.bbox_embed[num_layers]``;
3. keep the ``two_stage_num_proposals`` tokens with the highest class logit (max over
   classes); their refined boxes, detached, are the decoder's initial reference boxes (mixed
   query selection), while the content queries are the learned ``tgt_embed``;
4. prepend the denoising queries (if any) and run the decoder.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from detr_ext.layers import MultiScaleDeformableAttention

from .dino_encoder_decoder import DINOTransformerDecoder, DINOTransformerEncoder

__all__ = [
    "DINOTransformer",
    "gen_encoder_output_proposals",
    "get_encoder_reference_points",
    "get_valid_ratio",
]


def get_valid_ratio(mask: Tensor) -> Tensor:
    """Fraction of a padded feature map covered by the image.

    Args:
        mask: ``[B, H, W]`` bool, True on padding (bottom / right).

    Returns:
        ``[B, 2]`` float: (valid width / W, valid height / H).
    """
    _, height, width = mask.shape
    valid_height = torch.sum(~mask[:, :, 0], 1)
    valid_width = torch.sum(~mask[:, 0, :], 1)
    return torch.stack([valid_width.float() / width, valid_height.float() / height], -1)


def get_encoder_reference_points(spatial_shapes: Tensor, valid_ratios: Tensor) -> Tensor:
    """Reference points of the encoder: every pixel centre of every level.

    A centre is normalized by the valid (unpadded) size of its own level, then expressed in
    the frame of every level by multiplying with that level's valid ratio.

    Args:
        spatial_shapes: ``[L, 2]`` (H_l, W_l).
        valid_ratios: ``[B, L, 2]`` from :func:`get_valid_ratio`.

    Returns:
        ``[B, N, L, 2]`` normalized (x, y), ``N = sum_l H_l * W_l``.
    """
    device = valid_ratios.device
    points = []
    for level, (height, width) in enumerate(spatial_shapes.tolist()):
        center_y, center_x = torch.meshgrid(
            torch.linspace(0.5, height - 0.5, height, dtype=torch.float32, device=device),
            torch.linspace(0.5, width - 0.5, width, dtype=torch.float32, device=device),
            indexing="ij",
        )
        center_y = center_y.reshape(-1)[None] / (valid_ratios[:, None, level, 1] * height)
        center_x = center_x.reshape(-1)[None] / (valid_ratios[:, None, level, 0] * width)
        points.append(torch.stack((center_x, center_y), -1))
    reference_points = torch.cat(points, 1)  # [B, N, 2]
    return reference_points[:, :, None] * valid_ratios[:, None]


def gen_encoder_output_proposals(
    memory: Tensor, memory_padding_mask: Tensor, spatial_shapes: Tensor
) -> tuple[Tensor, Tensor]:
    """One box proposal per encoder token, and the tokens with invalid positions zeroed.

    The proposal of the pixel ``(x, y)`` of level ``l`` is centred on the pixel (normalized by
    the valid size of the level) with width and height ``0.05 * 2**l``. Proposals with any
    coordinate outside ``(0.01, 0.99)``, and padding tokens, are invalid: their logit is
    ``+inf`` and their memory is zeroed.

    Args:
        memory: ``[B, N, C]`` encoder output.
        memory_padding_mask: ``[B, N]`` bool, True on padding.
        spatial_shapes: ``[L, 2]`` (H_l, W_l).

    Returns:
        ``(output_memory, output_proposals)``: ``[B, N, C]`` memory with invalid tokens set to
        0 (before the ``enc_output`` projection, which the transformer applies) and
        ``[B, N, 4]`` proposal logits (``inverse_sigmoid`` of ``cxcywh``, unclamped).
    """
    batch_size = memory.shape[0]
    proposals = []
    start = 0
    for level, (height, width) in enumerate(spatial_shapes.tolist()):
        mask = memory_padding_mask[:, start : start + height * width].view(
            batch_size, height, width, 1
        )
        valid_height = torch.sum(~mask[:, :, 0, 0], 1)
        valid_width = torch.sum(~mask[:, 0, :, 0], 1)
        grid_y, grid_x = torch.meshgrid(
            torch.linspace(0, height - 1, height, dtype=torch.float32, device=memory.device),
            torch.linspace(0, width - 1, width, dtype=torch.float32, device=memory.device),
            indexing="ij",
        )
        grid = torch.cat([grid_x.unsqueeze(-1), grid_y.unsqueeze(-1)], -1)  # [H, W, 2]
        scale = torch.cat([valid_width.unsqueeze(-1), valid_height.unsqueeze(-1)], 1)
        grid = (grid.unsqueeze(0).expand(batch_size, -1, -1, -1) + 0.5) / scale.view(
            batch_size, 1, 1, 2
        )
        size = torch.ones_like(grid) * 0.05 * (2.0**level)
        proposals.append(torch.cat((grid, size), -1).view(batch_size, -1, 4))
        start += height * width

    output_proposals = torch.cat(proposals, 1)
    valid = ((output_proposals > 0.01) & (output_proposals < 0.99)).all(-1, keepdim=True)
    output_proposals = torch.log(output_proposals / (1 - output_proposals))
    output_proposals = output_proposals.masked_fill(memory_padding_mask.unsqueeze(-1), float("inf"))
    output_proposals = output_proposals.masked_fill(~valid, float("inf"))

    output_memory = memory.masked_fill(memory_padding_mask.unsqueeze(-1), 0.0)
    output_memory = output_memory.masked_fill(~valid, 0.0)
    return output_memory, output_proposals


class DINOTransformer(nn.Module):
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
        super().__init__()
        for part, levels in (
            ("encoder", encoder.num_feature_levels),
            ("decoder", decoder.num_feature_levels),
        ):
            if levels != num_feature_levels:
                raise ValueError(
                    f"DINOTransformer: expected the {part} to have num_feature_levels="
                    f"{num_feature_levels}, got {levels}"
                )
        if encoder.embed_dim != decoder.embed_dim:
            raise ValueError(
                f"DINOTransformer: encoder embed_dim {encoder.embed_dim} != decoder embed_dim "
                f"{decoder.embed_dim}"
            )
        self.encoder = encoder
        self.decoder = decoder
        self.num_feature_levels = num_feature_levels
        self.two_stage_num_proposals = two_stage_num_proposals
        self.embed_dim = encoder.embed_dim
        self.learnt_init_query = learnt_init_query

        self.level_embeds = nn.Parameter(torch.empty(num_feature_levels, self.embed_dim))
        if learnt_init_query:
            self.tgt_embed = nn.Embedding(two_stage_num_proposals, self.embed_dim)
        self.enc_output = nn.Linear(self.embed_dim, self.embed_dim)
        self.enc_output_norm = nn.LayerNorm(self.embed_dim)
        self.init_weights()

    def init_weights(self) -> None:
        """detrex's initialisation: Xavier-uniform for every matrix, then the deformable
        attentions' own init and a standard normal ``level_embeds``."""
        for parameter in self.parameters():
            if parameter.dim() > 1:
                nn.init.xavier_uniform_(parameter)
        for module in self.modules():
            if isinstance(module, MultiScaleDeformableAttention):
                module.init_weights()
        nn.init.normal_(self.level_embeds)

    def flatten_levels(
        self, feats: list[Tensor], masks: list[Tensor], pos_embeds: list[Tensor]
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Concatenate the levels into tokens.

        Returns:
            ``(feat_flatten [B, N, C], mask_flatten [B, N], pos_flatten [B, N, C] (with level
            embeddings), spatial_shapes [L, 2] int64, level_start_index [L])``.
        """
        if not len(feats) == len(masks) == len(pos_embeds) == self.num_feature_levels:
            raise ValueError(
                f"DINOTransformer: expected {self.num_feature_levels} feature maps, masks and "
                f"position embeddings, got {len(feats)}, {len(masks)} and {len(pos_embeds)}"
            )
        feat_flatten, mask_flatten, pos_flatten, spatial_shapes = [], [], [], []
        for level, (feat, mask, pos_embed) in enumerate(zip(feats, masks, pos_embeds)):
            spatial_shapes.append(feat.shape[-2:])
            feat_flatten.append(feat.flatten(2).transpose(1, 2))
            mask_flatten.append(mask.flatten(1))
            pos_embed = pos_embed.flatten(2).transpose(1, 2)
            pos_flatten.append(pos_embed + self.level_embeds[level].view(1, 1, -1))
        device = feat_flatten[0].device
        spatial_shapes = torch.as_tensor(spatial_shapes, dtype=torch.long, device=device)
        level_start_index = torch.cat(
            (spatial_shapes.new_zeros((1,)), spatial_shapes.prod(1).cumsum(0)[:-1])
        )
        return (
            torch.cat(feat_flatten, 1),
            torch.cat(mask_flatten, 1),
            torch.cat(pos_flatten, 1),
            spatial_shapes,
            level_start_index,
        )

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
            their boxes (sigmoid, with gradient), where ``Q = two_stage_num_proposals``.
        """
        decoder = self.decoder
        if decoder.class_embed is None or decoder.bbox_embed is None:
            raise RuntimeError(
                "DINOTransformer: decoder.class_embed / decoder.bbox_embed are not set; the "
                "detector must assign its heads (num_layers + 1 each) to the decoder"
            )
        if (dn_query_label is None) != (dn_query_bbox is None):
            raise ValueError(
                "DINOTransformer: expected dn_query_label and dn_query_bbox both given or both None"
            )
        feat_flatten, mask_flatten, pos_flatten, spatial_shapes, level_start_index = (
            self.flatten_levels(multi_level_feats, multi_level_masks, multi_level_pos_embeds)
        )
        batch_size, num_tokens, _ = feat_flatten.shape
        num_proposals = self.two_stage_num_proposals
        if num_tokens < num_proposals:
            raise ValueError(
                f"DINOTransformer: the feature maps have {num_tokens} positions in total, fewer "
                f"than two_stage_num_proposals={num_proposals}; use larger images or fewer "
                "queries"
            )
        valid_ratios = torch.stack([get_valid_ratio(mask) for mask in multi_level_masks], 1)
        reference_points = get_encoder_reference_points(spatial_shapes, valid_ratios)

        memory = self.encoder(
            feat_flatten,
            query_pos=pos_flatten,
            key_padding_mask=mask_flatten,
            reference_points=reference_points,
            spatial_shapes=spatial_shapes,
            level_start_index=level_start_index,
        )

        output_memory, output_proposals = gen_encoder_output_proposals(
            memory, mask_flatten, spatial_shapes
        )
        output_memory = self.enc_output_norm(self.enc_output(output_memory))
        enc_outputs_class = decoder.class_embed[decoder.num_layers](output_memory)
        enc_outputs_coord_unact = (
            decoder.bbox_embed[decoder.num_layers](output_memory) + output_proposals
        )
        topk_index = torch.topk(enc_outputs_class.max(-1)[0], num_proposals, dim=1)[1]
        topk_coords_unact = torch.gather(
            enc_outputs_coord_unact, 1, topk_index.unsqueeze(-1).repeat(1, 1, 4)
        )
        reference_points = topk_coords_unact.detach().sigmoid()
        enc_states = torch.gather(
            output_memory, 1, topk_index.unsqueeze(-1).repeat(1, 1, output_memory.shape[-1])
        )
        if self.learnt_init_query:
            target = self.tgt_embed.weight[None].repeat(batch_size, 1, 1)
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
        )
        return states, init_reference, references, enc_states, topk_coords_unact.sigmoid()
