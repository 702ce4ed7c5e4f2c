"""detr_ext.layers Grounding-DINO encoder, decoder and transformer (text-aware DINO)."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from detr_ext.layers import (
    MASKED_LOGIT,
    MLP,
    BiAttentionBlock,
    GroundingDINODecoder,
    GroundingDINOEncoder,
    GroundingDINOTransformer,
    MultiheadAttention,
    MultiScaleDeformableAttention,
    PositionEmbeddingSine,
    TextCrossAttention,
    TextEnhancerLayer,
    TokenAlignmentHead,
)

C, HEADS, LEVELS, POINTS = 32, 2, 2, 2
BATCH, NUM_TEXT = 2, 6
SHAPES = ((4, 5), (2, 3))  # N = 26 image tokens
NUM_IMAGE = sum(h * w for h, w in SHAPES)


def _transformer(num_proposals=10, num_layers=1, learnt_init_query=True, init_values=0.5):
    """A tiny transformer with the heads a detector would assign (no dropout)."""
    encoder = GroundingDINOEncoder(
        C,
        HEADS,
        64,
        0.0,
        0.0,
        num_layers=num_layers,
        num_feature_levels=LEVELS,
        num_points=POINTS,
        text_num_heads=HEADS,
        text_feedforward_dim=64,
        text_dropout=0.0,
        fusion_embed_dim=C,
        fusion_num_heads=HEADS,
        fusion_dropout=0.0,
        fusion_drop_path=0.0,
        # Strong fusion (IDEA starts at 1e-4) so that text visibly changes the image tokens.
        fusion_init_values=init_values,
    )
    decoder = GroundingDINODecoder(
        C, HEADS, 64, 0.0, 0.0, num_layers=num_layers, num_feature_levels=LEVELS, num_points=POINTS
    )
    transformer = GroundingDINOTransformer(
        encoder,
        decoder,
        num_feature_levels=LEVELS,
        two_stage_num_proposals=num_proposals,
        learnt_init_query=learnt_init_query,
    )
    heads = num_layers + 1
    decoder.class_embed = torch.nn.ModuleList(TokenAlignmentHead(C) for _ in range(heads))
    decoder.bbox_embed = torch.nn.ModuleList(MLP(C, C, 4, 3) for _ in range(heads))
    return transformer.eval()


def _inputs(shapes=SHAPES):
    """Image 1 is padded on the right of every level, its prompt has 2 padded tokens."""
    feats, masks = [], []
    for height, width in shapes:
        feats.append(torch.randn(BATCH, C, height, width))
        mask = torch.zeros(BATCH, height, width, dtype=torch.bool)
        mask[1, :, max(1, width * 3 // 5) :] = True
        masks.append(mask)
    position = PositionEmbeddingSine(C // 2, normalize=True, offset=-0.5)
    pos_embeds = [position(mask) for mask in masks]
    text = torch.randn(BATCH, NUM_TEXT, C)
    text_padding_mask = torch.zeros(BATCH, NUM_TEXT, dtype=torch.bool)
    text_padding_mask[1, 4:] = True
    return feats, masks, pos_embeds, text, text_padding_mask


def _outputs_at_valid_positions(outputs, text_padding_mask):
    states, init_reference, references, enc_states, enc_boxes, text_memory = outputs
    return [
        states,
        init_reference,
        references,
        enc_states,
        enc_boxes,
        text_memory[~text_padding_mask],
    ]


def test_parameter_names_keep_detrex_layers_and_idea_text_modules():
    transformer = _transformer()
    keys = set(transformer.state_dict())
    for key in (
        "encoder.layers.0.attentions.0.sampling_offsets.weight",
        "encoder.layers.0.ffns.0.layers.0.0.weight",
        "encoder.layers.0.norms.1.weight",
        "encoder.fusion_layers.0.attn.values_l_proj.weight",
        "encoder.fusion_layers.0.gamma_v",
        "encoder.text_layers.0.self_attn.in_proj_weight",
        "encoder.text_layers.0.self_attn.out_proj.weight",
        "encoder.text_layers.0.linear1.weight",
        "encoder.text_layers.0.linear2.bias",
        "encoder.text_layers.0.norm2.weight",
        "decoder.layers.0.attentions.0.attn.in_proj_weight",
        "decoder.layers.0.attentions.1.attn.in_proj_weight",
        "decoder.layers.0.attentions.2.sampling_offsets.weight",
        "decoder.layers.0.norms.3.weight",
        "decoder.ref_point_head.layers.1.weight",
        "decoder.class_embed.1.logit_scale",
        "decoder.class_embed.1.bias",
        "level_embeds",
        "tgt_embed.weight",
        "enc_output.weight",
        "enc_output_norm.weight",
    ):
        assert key in keys, key
    layer = transformer.decoder.layers[0]
    assert layer.operation_order == (
        "self_attn",
        "norm",
        "cross_attn",
        "norm",
        "cross_attn",
        "norm",
        "ffn",
        "norm",
    )
    assert [type(a) for a in layer.attentions] == [
        MultiheadAttention,
        TextCrossAttention,
        MultiScaleDeformableAttention,
    ]
    assert isinstance(transformer.encoder.fusion_layers[0], BiAttentionBlock)
    assert isinstance(transformer.encoder.text_layers[0], TextEnhancerLayer)


@pytest.mark.parametrize("learnt_init_query", [True, False])
def test_output_shapes(learnt_init_query):
    transformer = _transformer(num_layers=2, learnt_init_query=learnt_init_query)
    outputs = transformer(*_inputs())
    states, init_reference, references, enc_states, enc_boxes, text_memory = outputs
    assert states.shape == (2, BATCH, 10, C)
    assert init_reference.shape == (BATCH, 10, 4)
    assert references.shape == (2, BATCH, 10, 4)
    assert enc_states.shape == (BATCH, 10, C) and enc_boxes.shape == (BATCH, 10, 4)
    assert text_memory.shape == (BATCH, NUM_TEXT, C)
    assert all(torch.isfinite(output).all() for output in outputs)


def test_denoising_queries_and_fewer_positions_than_proposals():
    # 900 proposals asked, 26 positions: keep them all and trim the denoising mask.
    transformer = _transformer(num_proposals=900)
    num_dn = 4
    dn_label = torch.randn(BATCH, num_dn, C)
    dn_bbox = torch.randn(BATCH, num_dn, 4)
    attn_mask = torch.zeros(num_dn + 900, num_dn + 900, dtype=torch.bool)
    attn_mask[num_dn:, :num_dn] = True
    states, init_reference, references, enc_states, enc_boxes, _ = transformer(
        *_inputs(), dn_query_label=dn_label, dn_query_bbox=dn_bbox, attn_mask=attn_mask
    )
    assert states.shape == (1, BATCH, num_dn + NUM_IMAGE, C)
    assert enc_states.shape == (BATCH, NUM_IMAGE, C)
    torch.testing.assert_close(init_reference[:, :num_dn], dn_bbox.sigmoid())
    torch.testing.assert_close(init_reference[:, num_dn:], enc_boxes)
    assert references.shape == (1, BATCH, num_dn + NUM_IMAGE, 4)


def test_encoder_and_decoder_shapes():
    transformer = _transformer()
    feats, masks, pos_embeds, text, text_padding_mask = _inputs()
    (memory, text_memory), mask_flatten, spatial_shapes, level_start_index, valid_ratios = (
        transformer.encode(feats, masks, pos_embeds, text=text, text_padding_mask=text_padding_mask)
    )
    assert memory.shape == (BATCH, NUM_IMAGE, C) and text_memory.shape == (BATCH, NUM_TEXT, C)
    queries = torch.randn(BATCH, 3, C)
    boxes = torch.rand(BATCH, 3, 4) * 0.5 + 0.25
    states, references = transformer.decoder(
        queries,
        memory,
        mask_flatten,
        boxes,
        valid_ratios,
        spatial_shapes,
        level_start_index,
        text_memory,
        text_padding_mask,
    )
    assert states.shape == (1, BATCH, 3, C) and references.shape == (1, BATCH, 3, 4)


def test_padded_text_and_image_positions_do_not_change_valid_outputs():
    transformer = _transformer(num_layers=2)
    feats, masks, pos_embeds, text, text_padding_mask = _inputs()
    with torch.no_grad():
        reference = transformer(feats, masks, pos_embeds, text, text_padding_mask)
        noisy_feats = [
            feat.masked_fill(mask[:, None], 100.0) for feat, mask in zip(feats, masks, strict=True)
        ]
        noisy_text = text.masked_fill(text_padding_mask[..., None], -100.0)
        noisy = transformer(noisy_feats, masks, pos_embeds, noisy_text, text_padding_mask)
        for got, expected in zip(
            _outputs_at_valid_positions(noisy, text_padding_mask),
            _outputs_at_valid_positions(reference, text_padding_mask),
            strict=True,
        ):
            torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
        # The test can fail: the same change to a valid text token moves the outputs.
        text[1, 0] = -100.0
        moved = transformer(feats, masks, pos_embeds, text, text_padding_mask)
    assert not torch.allclose(moved[0][:, 1], reference[0][:, 1], atol=1e-3)
    assert not torch.allclose(moved[5][1, 1:4], reference[5][1, 1:4], atol=1e-3)


def test_fully_padded_prompt_gives_no_nan():
    transformer = _transformer(num_layers=2).train()
    feats, masks, pos_embeds, text, text_padding_mask = _inputs()
    text_padding_mask[0] = True
    text.requires_grad_(True)
    feats[0].requires_grad_(True)
    outputs = transformer(feats, masks, pos_embeds, text, text_padding_mask)
    assert all(torch.isfinite(output).all() for output in outputs)
    head = transformer.decoder.class_embed[0]
    logits = head(outputs[0][-1], outputs[5], text_padding_mask)
    assert (logits[0] == MASKED_LOGIT).all()
    (outputs[0].sum() + outputs[3].sum() + logits[1].sum()).backward()
    assert torch.isfinite(text.grad).all() and torch.isfinite(feats[0].grad).all()
    # Nothing of the empty prompt reaches the outputs.
    assert (text.grad[0] == 0).all()


def test_gradients_reach_image_and_text_inputs():
    transformer = _transformer(init_values=1e-4).train()
    feats, masks, pos_embeds, text, text_padding_mask = _inputs()
    for feat in feats:
        feat.requires_grad_(True)
    text.requires_grad_(True)
    states, _, references, enc_states, enc_boxes, text_memory = transformer(
        feats, masks, pos_embeds, text, text_padding_mask
    )
    logits = transformer.decoder.class_embed[0](states[-1], text_memory, text_padding_mask)
    loss = logits.sigmoid().sum() + references.sum() + enc_states.sum() + enc_boxes.sum()
    loss.backward()
    for feat, mask in zip(feats, masks, strict=True):
        assert feat.grad.permute(0, 2, 3, 1)[~mask].abs().sum() > 0
        assert (feat.grad.permute(0, 2, 3, 1)[mask] == 0).all()
    assert text.grad[~text_padding_mask].abs().sum() > 0
    assert (text.grad[text_padding_mask] == 0).all()
    encoder = transformer.encoder
    for parameter in (
        encoder.fusion_layers[0].gamma_l,
        encoder.fusion_layers[0].attn.l_proj.weight,
        encoder.text_layers[0].linear1.weight,
        transformer.decoder.layers[0].attentions[1].attn.in_proj_weight,
    ):
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0


def test_proposals_are_the_tokens_with_the_best_token_logit():
    transformer = _transformer(num_proposals=7)
    proposal_head = transformer.decoder.class_embed[-1]
    with torch.no_grad():
        # A sharp head so that the max and the mean over the prompt rank the tokens apart.
        proposal_head.logit_scale.fill_(math.log(20.0))
    captured = {}
    proposal_head.register_forward_hook(
        lambda module, args, output: captured.update(memory=args[0], text=args[1], logits=output)
    )
    feats, masks, pos_embeds, text, text_padding_mask = _inputs()
    _, init_reference, _, enc_states, enc_boxes, text_memory = transformer(
        feats, masks, pos_embeds, text, text_padding_mask
    )
    memory, logits = captured["memory"], captured["logits"]
    assert logits.shape == (BATCH, NUM_IMAGE, NUM_TEXT)
    assert captured["text"] is text_memory
    # Hand check from the head's weights: scale * <x, t> / sqrt(C) + bias, padding masked.
    by_hand = 20.0 * memory @ text_memory.transpose(1, 2) / math.sqrt(C) + proposal_head.bias
    by_hand = by_hand.masked_fill(text_padding_mask[:, None], MASKED_LOGIT)
    torch.testing.assert_close(logits, by_hand)
    best = by_hand.max(-1).values
    order = best.argsort(dim=1, descending=True)[:, :7]
    expected_states = torch.stack([memory[b, order[b]] for b in range(BATCH)])
    torch.testing.assert_close(enc_states, expected_states)
    torch.testing.assert_close(init_reference, enc_boxes)
    # The choice is a max over the prompt, not e.g. a mean (which picks other tokens here).
    by_mean = by_hand[..., :4].mean(-1).argsort(dim=1, descending=True)[:, :7]
    assert any(set(order[b].tolist()) != set(by_mean[b].tolist()) for b in range(BATCH)), (
        "test case too weak: max and mean select the same tokens"
    )


def test_text_cross_attention_adds_no_position_to_the_text_keys():
    # T equal to Q is the case where MultiheadAttention would reuse query_pos for the keys.
    attention = TextCrossAttention(C, HEADS, batch_first=True).double().eval()
    query, query_pos = torch.randn(2, 4, C).double(), torch.randn(2, 4, C).double()
    text = torch.randn(2, 4, C).double()
    padding = torch.tensor([[False, False, True, True], [False, False, False, False]])
    image_memory = torch.randn(2, 9, C).double()
    out = attention(
        query, image_memory, image_memory, query_pos=query_pos, text=text, text_padding_mask=padding
    )
    inner = attention.attn
    expected = query + inner(
        (query + query_pos).transpose(0, 1),
        text.transpose(0, 1),
        text.transpose(0, 1),
        key_padding_mask=padding,
    )[0].transpose(0, 1)
    torch.testing.assert_close(out, expected)
    with pytest.raises(ValueError, match="text"):
        attention(query, image_memory, image_memory)


def test_text_enhancer_layer_is_post_norm_self_attention_with_masked_padding():
    layer = TextEnhancerLayer(C, HEADS, 64, dropout=0.0).eval()
    text = torch.randn(2, 5, C)
    padding = torch.tensor([[False] * 5, [False, False, True, True, True]])
    position = torch.randn(2, 5, C)
    out = layer(text, padding, position)
    query = (text + position).transpose(0, 1)
    attended = layer.self_attn(query, query, text.transpose(0, 1), key_padding_mask=padding)[0]
    hidden = layer.norm1(text + attended.transpose(0, 1))
    expected = layer.norm2(hidden + layer.linear2(F.relu(layer.linear1(hidden))))
    torch.testing.assert_close(out, expected)
    empty = layer(text, torch.ones(2, 5, dtype=torch.bool), position)
    assert torch.isfinite(empty).all()


def test_encoder_adds_a_sine_embedding_of_token_positions():
    transformer = _transformer()
    encoder = transformer.encoder
    feats, masks, pos_embeds, text, text_padding_mask = _inputs()
    with torch.no_grad():
        with_positions = transformer.encode(
            feats, masks, pos_embeds, text=text, text_padding_mask=text_padding_mask
        )[0][1]
        without = copy.deepcopy(transformer)
        without.encoder.text_pos_embed = False
        plain = without.encode(
            feats, masks, pos_embeds, text=text, text_padding_mask=text_padding_mask
        )[0][1]
    assert encoder.text_pos_embed and not torch.allclose(with_positions, plain, atol=1e-3)


def test_bf16_autocast_runs_without_nan():
    transformer = _transformer(num_layers=2)
    feats, masks, pos_embeds, text, text_padding_mask = _inputs()
    text_padding_mask[0, 3:] = True
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        outputs = transformer(feats, masks, pos_embeds, text, text_padding_mask)
        logits = transformer.decoder.class_embed[0](outputs[0][-1], outputs[5], text_padding_mask)
    assert all(torch.isfinite(output).all() for output in outputs)
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()


def test_bad_inputs_raise_clear_errors():
    transformer = _transformer()
    feats, masks, pos_embeds, text, text_padding_mask = _inputs()
    with pytest.raises(ValueError, match="text for 2 images"):
        transformer(feats, masks, pos_embeds, text[:1], text_padding_mask[:1])
    with pytest.raises(ValueError, match=r"text of shape \[B, T, 32\]"):
        transformer(feats, masks, pos_embeds, text[..., :8], text_padding_mask)
    with pytest.raises(ValueError, match="text_padding_mask"):
        transformer(feats, masks, pos_embeds, text, text_padding_mask.long())
    transformer.decoder.class_embed = None
    with pytest.raises(RuntimeError, match="class_embed"):
        transformer(feats, masks, pos_embeds, text, text_padding_mask)
    decoder = GroundingDINODecoder(C, HEADS, 64, num_layers=1, num_feature_levels=3)
    encoder = GroundingDINOEncoder(
        C, HEADS, 64, num_layers=1, num_feature_levels=LEVELS, fusion_embed_dim=C
    )
    with pytest.raises(ValueError, match="num_feature_levels"):
        GroundingDINOTransformer(encoder, decoder, num_feature_levels=LEVELS)
