"""Deformable DETR geometry, hand-computed: valid ratios, encoder reference points, two-stage
proposals and their position embedding."""

from __future__ import annotations

import math

import torch
from torch import nn

from projects.deformable_detr.modeling import (
    DeformableDetrTransformer,
    DeformableDetrTransformerDecoder,
    DeformableDetrTransformerEncoder,
)


def test_get_valid_ratio():
    mask = torch.zeros(2, 4, 5, dtype=torch.bool)
    mask[1, 3:, :] = True
    mask[1, :, 2:] = True
    ratios = DeformableDetrTransformer.get_valid_ratio(mask)
    torch.testing.assert_close(ratios, torch.tensor([[1.0, 1.0], [2 / 5, 3 / 4]]))


def test_get_reference_points_hand_computed():
    # Level 0 is 2 x 4, level 1 is 1 x 2. Image 1 is valid on the top-left 1 x 2 of level 0
    # and the left 1 x 1 of level 1.
    spatial_shapes = torch.tensor([[2, 4], [1, 2]])
    valid_ratios = torch.tensor([[[1.0, 1.0], [1.0, 1.0]], [[0.5, 0.5], [0.5, 1.0]]])
    points = DeformableDetrTransformer.get_reference_points(spatial_shapes, valid_ratios, "cpu")
    assert points.shape == (2, 10, 2, 2)

    # Image 0 (no padding): pixel centers normalized by the level size, same on every level.
    level0 = [(x / 8, y / 4) for y in (1, 3) for x in (1, 3, 5, 7)]
    level1 = [(0.25, 0.5), (0.75, 0.5)]
    expected0 = torch.tensor(level0 + level1)[:, None, :].expand(10, 2, 2)
    torch.testing.assert_close(points[0], expected0)

    # Image 1, level 0 pixel (row 0, col 1): center (1.5, 0.5) over the valid size (2, 1)
    # gives (0.75, 0.5) of the image; on level 0 that is (0.75 * 0.5, 0.5 * 0.5) of the
    # padded map and on level 1 (0.75 * 0.5, 0.5 * 1.0).
    torch.testing.assert_close(points[1, 1], torch.tensor([[0.375, 0.25], [0.375, 0.5]]))
    # Level 0 pixel (row 1, col 3), on padding: (3.5 / 2, 1.5 / 1) = (1.75, 1.5) of the image.
    torch.testing.assert_close(points[1, 7], torch.tensor([[0.875, 0.75], [0.875, 1.5]]))
    # Level 1 pixel (0, 0): (0.5 / 1, 0.5 / 1) of the image.
    torch.testing.assert_close(points[1, 8], torch.tensor([[0.25, 0.25], [0.25, 0.5]]))


def _identity_two_stage_transformer(channels: int, num_levels: int) -> DeformableDetrTransformer:
    encoder = DeformableDetrTransformerEncoder(
        channels, 2, 16, 0.0, 0.0, num_layers=1, num_feature_levels=num_levels
    )
    decoder = DeformableDetrTransformerDecoder(
        channels, 2, 16, 0.0, 0.0, num_layers=1, num_feature_levels=num_levels
    )
    transformer = DeformableDetrTransformer(
        encoder, decoder, num_levels, as_two_stage=True, two_stage_num_proposals=3
    )
    with torch.no_grad():
        transformer.enc_output.weight.copy_(torch.eye(channels))
        transformer.enc_output.bias.zero_()
    return transformer


def test_gen_encoder_output_proposals_hand_computed():
    # Level 0: 2 x 4, level 1: 1 x 2, level 2: 1 x 64 (its border pixels fall outside
    # (0.01, 0.99)). Image 1 is padded: valid 1 x 2 on level 0, 1 x 1 on level 1, 1 x 60 on
    # level 2.
    spatial_shapes = torch.tensor([[2, 4], [1, 2], [1, 64]])
    masks = [torch.zeros(2, h, w, dtype=torch.bool) for h, w in spatial_shapes.tolist()]
    masks[0][1, 1:, :] = True
    masks[0][1, :, 2:] = True
    masks[1][1, :, 1:] = True
    masks[2][1, :, 60:] = True
    padding_mask = torch.cat([m.flatten(1) for m in masks], 1)
    channels = 4
    memory = torch.randn(2, padding_mask.shape[1], channels)
    transformer = _identity_two_stage_transformer(channels, 3)

    output_memory, proposals = transformer.gen_encoder_output_proposals(
        memory, padding_mask, spatial_shapes
    )
    assert proposals.shape == (2, 74, 4) and output_memory.shape == (2, 74, channels)

    def logit(v):
        return math.log(v / (1 - v))

    def box(cx, cy, size):
        return torch.tensor([logit(cx), logit(cy), logit(size), logit(size)])

    inf = torch.full((4,), float("inf"))
    # Image 0, level 0, row 1 col 2: ((2 + 0.5) / 4, (1 + 0.5) / 2), size 0.05.
    torch.testing.assert_close(proposals[0, 6], box(0.625, 0.75, 0.05))
    # Image 0, level 1, col 1: size 0.05 * 2.
    torch.testing.assert_close(proposals[0, 9], box(0.75, 0.5, 0.1))
    # Image 1, level 0, col 1: normalized by the valid width 2 and height 1.
    torch.testing.assert_close(proposals[1, 1], box(0.75, 0.5, 0.05))
    # Image 1, level 1, col 0.
    torch.testing.assert_close(proposals[1, 8], box(0.5, 0.5, 0.1))
    # Image 1, level 2, cols 0 and 59 of 60 valid: 0.5 / 60 < 0.01 and 59.5 / 60 > 0.99.
    torch.testing.assert_close(proposals[1, 10], inf)
    torch.testing.assert_close(proposals[1, 10 + 59], inf)
    # Image 1, level 2, col 10: (10.5 / 60, 0.5), size 0.05 * 4.
    torch.testing.assert_close(proposals[1, 20], box(10.5 / 60, 0.5, 0.2))
    # Padding is inf.
    for index in (2, 3, 4, 7, 9, 10 + 60, 73):
        torch.testing.assert_close(proposals[1, index], inf)
    # Level 2 of image 0: col 0 (0.5 / 64 < 0.01) and col 63 are invalid, col 1 is not.
    torch.testing.assert_close(proposals[0, 10], inf)
    torch.testing.assert_close(proposals[0, 73], inf)
    torch.testing.assert_close(proposals[0, 11], box(1.5 / 64, 0.5, 0.2))

    # Memory: zeroed where the proposal is padded or invalid, then Linear (identity here) and
    # LayerNorm (default affine), which maps zeros to zeros.
    invalid = torch.isinf(proposals).all(-1)
    # Image 0: 2 out of range; image 1: 6 + 1 + 4 padded and 2 out of range.
    assert invalid.sum() == 2 + 11 + 2
    expected = nn.functional.layer_norm(memory, (channels,))
    expected[invalid] = 0.0
    torch.testing.assert_close(output_memory, expected)
    assert torch.isfinite(proposals[~invalid]).all()


def test_proposal_pos_embed_matches_sine_formula():
    proposals = torch.tensor([[[0.0, 1.0, -2.0, 0.5]]])
    embed = DeformableDetrTransformer.get_proposal_pos_embed(proposals, num_pos_feats=4)
    assert embed.shape == (1, 1, 16)
    dim_t = torch.tensor([1.0, 1.0, 100.0, 100.0])  # 10000 ** (2 * (i // 2) / 4)
    expected = []
    for value in proposals.sigmoid()[0, 0]:
        angles = value * 2 * math.pi / dim_t
        expected += [angles[0].sin(), angles[1].cos(), angles[2].sin(), angles[3].cos()]
    torch.testing.assert_close(embed[0, 0], torch.stack(expected))
