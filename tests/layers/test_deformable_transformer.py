"""detr_ext.layers.deformable_transformer and deformable_geometry: the shared encoder and
decoder layers, the transformer base (flattening, encoding) and the encoder geometry."""

import pytest
import torch

from detr_ext.layers import (
    DeformableTransformerBase,
    DeformableTransformerEncoder,
    MultiheadAttention,
    MultiScaleDeformableAttention,
    deformable_transformer_layer,
    gen_encoder_output_proposals,
    get_encoder_reference_points,
    get_valid_ratio,
)

C = 8


def test_encoder_and_decoder_layers_have_the_detrex_layout():
    encoder_layer = deformable_transformer_layer(C, 2, 16, 0.0, 0.0, 3, 2)
    assert encoder_layer.operation_order == ("self_attn", "norm", "ffn", "norm")
    assert [type(a) for a in encoder_layer.attentions] == [MultiScaleDeformableAttention]
    attention = encoder_layer.attentions[0]
    assert attention.num_levels == 3 and attention.num_points == 2

    decoder_layer = deformable_transformer_layer(C, 2, 16, 0.0, 0.0, 3, 2, decoder=True)
    order = ("self_attn", "norm", "cross_attn", "norm", "ffn", "norm")
    assert decoder_layer.operation_order == order
    assert [type(a) for a in decoder_layer.attentions] == [
        MultiheadAttention,
        MultiScaleDeformableAttention,
    ]
    assert len(decoder_layer.norms) == 3 and decoder_layer.ffns[0].layers[1].in_features == 16


def test_geometry_accepts_spatial_shapes_as_tensor_or_list():
    mask = torch.zeros(2, 2, 4, dtype=torch.bool)
    mask[1, :, 2:] = True
    torch.testing.assert_close(get_valid_ratio(mask), torch.tensor([[1.0, 1.0], [0.5, 1.0]]))
    valid_ratios = get_valid_ratio(mask)[:, None]
    from_tensor = get_encoder_reference_points(torch.tensor([[2, 4]]), valid_ratios)
    from_list = get_encoder_reference_points([(2, 4)], valid_ratios, device="cpu")
    assert torch.equal(from_tensor, from_list) and from_tensor.shape == (2, 8, 1, 2)
    memory = torch.ones(2, 8, 3)
    memory_out, proposals = gen_encoder_output_proposals(memory, mask.flatten(1), [(2, 4)])
    memory_ref, proposals_ref = gen_encoder_output_proposals(
        memory, mask.flatten(1), torch.tensor([[2, 4]])
    )
    assert torch.equal(proposals, proposals_ref) and torch.equal(memory_out, memory_ref)
    # No projection: valid positions keep their memory, padded ones are zeroed.
    assert (memory_out[0] == 1).all() and (memory_out[1, 2] == 0).all()


def _base(num_levels=2, decoder_dim=C):
    encoder = DeformableTransformerEncoder(
        C, 2, 16, 0.0, 0.0, num_layers=1, num_feature_levels=num_levels, num_points=2
    )
    decoder = DeformableTransformerEncoder(
        decoder_dim, 2, 16, 0.0, 0.0, num_layers=1, num_feature_levels=num_levels
    )
    base = DeformableTransformerBase(encoder, decoder, num_levels)
    base.init_weights()
    return base


def test_transformer_base_flattens_and_encodes_the_levels():
    torch.manual_seed(0)
    base = _base()
    shapes = [(4, 6), (2, 3)]
    feats = [torch.randn(2, C, h, w) for h, w in shapes]
    masks = [torch.zeros(2, h, w, dtype=torch.bool) for h, w in shapes]
    masks[1][1, :, 2:] = True
    pos = [torch.zeros(2, C, h, w) for h, w in shapes]

    feat_flat, mask_flat, pos_flat, spatial_shapes, level_start_index = base.flatten_levels(
        feats, masks, pos
    )
    assert feat_flat.shape == (2, 30, C) and mask_flat.shape == (2, 30)
    assert spatial_shapes.tolist() == [[4, 6], [2, 3]] and level_start_index.tolist() == [0, 24]
    torch.testing.assert_close(feat_flat[:, 24:], feats[1].flatten(2).transpose(1, 2))
    # Zero position embeddings leave only the level embedding of each token.
    torch.testing.assert_close(pos_flat[0, 25], base.level_embeds[1])

    memory, mask_out, _, _, valid_ratios = base.encode(feats, masks, pos)
    assert memory.shape == (2, 30, C) and torch.equal(mask_out, mask_flat)
    torch.testing.assert_close(valid_ratios[1], torch.tensor([[1.0, 1.0], [2 / 3, 1.0]]))

    with pytest.raises(ValueError, match="expected 2 feature maps"):
        base.flatten_levels(feats[:1], masks[:1], pos[:1])


def test_transformer_base_rejects_mismatched_widths():
    with pytest.raises(ValueError, match="same embed_dim"):
        _base(decoder_dim=2 * C)
