"""detr_ext.layers.vl_fusion: GLIP / Grounding-DINO bi-directional image <-> text attention."""

import pytest
import torch
import torch.nn.functional as F
from timm.layers import DropPath

from detr_ext.layers import BiAttentionBlock, BiMultiHeadAttention, vl_fusion

V_DIM, L_DIM, EMBED_DIM, NUM_HEADS = 32, 24, 16, 2
BATCH, NUM_IMAGE, NUM_TEXT = 2, 7, 5

# IDEA-Research GroundingDINO fuse_modules.BiAttentionBlock parameter names.
IDEA_BLOCK_KEYS = {
    "gamma_v",
    "gamma_l",
    "layer_norm_v.weight",
    "layer_norm_v.bias",
    "layer_norm_l.weight",
    "layer_norm_l.bias",
    *(
        f"attn.{name}.{param}"
        for name in (
            "v_proj",
            "l_proj",
            "values_v_proj",
            "values_l_proj",
            "out_v_proj",
            "out_l_proj",
        )
        for param in ("weight", "bias")
    ),
}


def _inputs(dtype=torch.float32):
    v = torch.randn(BATCH, NUM_IMAGE, V_DIM, dtype=dtype)
    l = torch.randn(BATCH, NUM_TEXT, L_DIM, dtype=dtype)  # noqa: E741
    mask_v = torch.zeros(BATCH, NUM_IMAGE, dtype=torch.bool)
    mask_v[1, 4:] = True
    mask_l = torch.zeros(BATCH, NUM_TEXT, dtype=torch.bool)
    mask_l[1, 3:] = True
    return v, l, mask_v, mask_l


def _block(init_values=1.0, **kwargs):
    # A layer-scale of 1 (not 1e-4) so that the attention branch visibly moves the outputs.
    block = BiAttentionBlock(V_DIM, L_DIM, EMBED_DIM, NUM_HEADS, init_values=init_values, **kwargs)
    for norm in (block.layer_norm_v, block.layer_norm_l):
        torch.nn.init.normal_(norm.weight)
        torch.nn.init.normal_(norm.bias)
    return block.eval()


def _reference(attn, v, l, mask_v, mask_l):  # noqa: E741
    """The two attentions written out per image and head, padded keys dropped, in float64."""
    head_dim = EMBED_DIM // NUM_HEADS
    out_v = torch.zeros(*v.shape[:2], EMBED_DIM, dtype=v.dtype)
    out_l = torch.zeros(*l.shape[:2], EMBED_DIM, dtype=v.dtype)
    for b in range(v.shape[0]):
        valid_v, valid_l = ~mask_v[b], ~mask_l[b]
        for h in range(NUM_HEADS):
            channels = slice(h * head_dim, (h + 1) * head_dim)
            q = F.linear(v[b], attn.v_proj.weight, attn.v_proj.bias)[:, channels]
            k = F.linear(l[b], attn.l_proj.weight, attn.l_proj.bias)[:, channels]
            value_v = F.linear(v[b], attn.values_v_proj.weight, attn.values_v_proj.bias)
            value_l = F.linear(l[b], attn.values_l_proj.weight, attn.values_l_proj.bias)
            logits = q @ k.T / head_dim**0.5  # [N, T]
            out_v[b, :, channels] = logits[:, valid_l].softmax(-1) @ value_l[valid_l][:, channels]
            out_l[b, :, channels] = logits.T[:, valid_v].softmax(-1) @ value_v[valid_v][:, channels]
    return (
        F.linear(out_v, attn.out_v_proj.weight, attn.out_v_proj.bias),
        F.linear(out_l, attn.out_l_proj.weight, attn.out_l_proj.bias),
    )


def test_state_dict_keys_are_idea_grounding_dino_names():
    block = BiAttentionBlock(V_DIM, L_DIM, EMBED_DIM, NUM_HEADS)
    assert set(block.state_dict()) == IDEA_BLOCK_KEYS
    shapes = {key: tuple(value.shape) for key, value in block.state_dict().items()}
    assert shapes["attn.v_proj.weight"] == (EMBED_DIM, V_DIM)
    assert shapes["attn.values_l_proj.weight"] == (EMBED_DIM, L_DIM)
    assert shapes["attn.out_l_proj.weight"] == (L_DIM, EMBED_DIM)
    assert shapes["gamma_v"] == (V_DIM,) and shapes["gamma_l"] == (L_DIM,)
    # Layer scale starts at init_values, GLIP's biases at zero.
    assert torch.equal(block.gamma_l, torch.full((L_DIM,), 1e-4))
    assert (block.attn.out_v_proj.bias == 0).all()


def test_attention_shapes_and_values_match_a_written_out_reference():
    attn = BiMultiHeadAttention(V_DIM, L_DIM, EMBED_DIM, NUM_HEADS).double().eval()
    for projection in (attn.v_proj, attn.l_proj, attn.values_l_proj, attn.out_v_proj):
        torch.nn.init.normal_(projection.bias)
    v, l, mask_v, mask_l = _inputs(torch.float64)  # noqa: E741
    delta_v, delta_l = attn(v, l, attention_mask_v=mask_v, attention_mask_l=mask_l)
    assert delta_v.shape == (BATCH, NUM_IMAGE, V_DIM) and delta_l.shape == (BATCH, NUM_TEXT, L_DIM)
    expected_v, expected_l = _reference(attn, v, l, mask_v, mask_l)
    torch.testing.assert_close(delta_v, expected_v)
    torch.testing.assert_close(delta_l, expected_l)


def test_block_is_pre_norm_with_layer_scaled_residual():
    block = _block(init_values=0.5)
    v, l, mask_v, mask_l = _inputs()  # noqa: E741
    out_v, out_l = block(v, l, mask_v, mask_l)
    delta_v, delta_l = block.attn(block.layer_norm_v(v), block.layer_norm_l(l), mask_v, mask_l)
    torch.testing.assert_close(out_v, block.layer_norm_v(v) + 0.5 * delta_v)
    torch.testing.assert_close(out_l, block.layer_norm_l(l) + 0.5 * delta_l)


def test_padded_tokens_do_not_change_valid_outputs():
    block = _block()
    v, l, mask_v, mask_l = _inputs()  # noqa: E741
    out_v, out_l = block(v, l, mask_v, mask_l)
    noisy_v = v.masked_fill(mask_v[..., None], 1e3)
    noisy_l = l.masked_fill(mask_l[..., None], -1e3)
    new_v, new_l = block(noisy_v, noisy_l, mask_v, mask_l)
    torch.testing.assert_close(new_v[~mask_v], out_v[~mask_v])
    torch.testing.assert_close(new_l[~mask_l], out_l[~mask_l])
    # Without the masks the same perturbation does reach the valid tokens.
    unmasked_v, unmasked_l = block(noisy_v, noisy_l)
    assert not torch.allclose(unmasked_v[~mask_v], out_v[~mask_v], atol=1e-3)
    assert not torch.allclose(unmasked_l[~mask_l], out_l[~mask_l], atol=1e-3)


def test_fully_padded_text_row_gives_no_nan_and_attends_to_nothing():
    block = _block()
    v, l, mask_v, mask_l = _inputs()  # noqa: E741
    mask_l[0] = True
    v.requires_grad_(True)
    l.requires_grad_(True)
    out_v, out_l = block(v, l, mask_v, mask_l)
    assert torch.isfinite(out_v).all() and torch.isfinite(out_l).all()
    # No text to read: the image update is the output projection of a zero attention.
    expected = block.layer_norm_v(v[0]) + block.gamma_v * block.attn.out_v_proj.bias
    torch.testing.assert_close(out_v[0], expected)
    (out_v.sum() + out_l.sum()).backward()
    assert torch.isfinite(v.grad).all() and torch.isfinite(l.grad).all()


def test_gradients_reach_both_modalities_across_directions():
    block = _block(init_values=1e-4).train()
    v, l, mask_v, mask_l = _inputs()  # noqa: E741
    v.requires_grad_(True)
    l.requires_grad_(True)
    out_v, out_l = block(v, l, mask_v, mask_l)
    # Text reaches the image tokens only through the attention, and vice versa.
    (grad_l,) = torch.autograd.grad(out_v.pow(2).sum(), l, retain_graph=True)
    (grad_v,) = torch.autograd.grad(out_l.pow(2).sum(), v, retain_graph=True)
    assert grad_l[~mask_l].abs().sum() > 0 and grad_v[~mask_v].abs().sum() > 0
    # ... and never from padded tokens.
    assert (grad_l[mask_l] == 0).all() and (grad_v[mask_v] == 0).all()
    out_v.sum().backward()
    assert block.gamma_v.grad.abs().sum() > 0 and block.attn.l_proj.weight.grad.abs().sum() > 0


def test_huge_logits_stay_finite_and_exact():
    attn = BiMultiHeadAttention(V_DIM, L_DIM, EMBED_DIM, NUM_HEADS).double().eval()
    v, l, mask_v, mask_l = _inputs(torch.float64)  # noqa: E741
    # Logits far beyond the +-50000 clamp: shifting each row by its max first keeps the
    # ranking (clamping first would flatten the largest logits into ties).
    v, l = v * 300, l * 300  # noqa: E741
    delta_v, delta_l = attn(v, l, mask_v, mask_l)
    assert torch.isfinite(delta_v).all() and torch.isfinite(delta_l).all()
    expected_v, expected_l = _reference(attn, v, l, mask_v, mask_l)
    torch.testing.assert_close(delta_v, expected_v)
    torch.testing.assert_close(delta_l, expected_l)
    with torch.no_grad():
        logits = attn.v_proj(v[0]) @ attn.l_proj(l[0]).T
    assert logits.abs().max() > 1e6


def test_bf16_autocast_runs_in_float32_without_nan(monkeypatch):
    logit_dtypes = []

    def recording_softmax(logits, key_padding_mask):
        logit_dtypes.append(logits.dtype)
        return softmax(logits, key_padding_mask)

    softmax = vl_fusion._masked_stable_softmax
    monkeypatch.setattr(vl_fusion, "_masked_stable_softmax", recording_softmax)
    block = _block(init_values=1e-4)
    v, l, mask_v, mask_l = _inputs()  # noqa: E741
    mask_l[0] = True
    reference_v, reference_l = block(v, l, mask_v, mask_l)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out_v, out_l = block(v * 100, l * 100, mask_v, mask_l)
        small_v, small_l = block(v, l, mask_v, mask_l)
    assert torch.isfinite(out_v).all() and torch.isfinite(out_l).all()
    # The attention logits were float32 even under bf16 autocast.
    assert logit_dtypes == [torch.float32] * 6
    torch.testing.assert_close(small_v.float(), reference_v, atol=0.05, rtol=0.05)
    torch.testing.assert_close(small_l.float(), reference_l, atol=0.05, rtol=0.05)


def test_dropout_on_attention_probabilities_and_drop_path():
    block = _block(dropout=0.5, drop_path=0.2)
    assert isinstance(block.drop_path, DropPath)
    v, l, mask_v, mask_l = _inputs()  # noqa: E741
    eval_v, _ = block(v, l, mask_v, mask_l)
    torch.testing.assert_close(block(v, l, mask_v, mask_l)[0], eval_v)
    block.attn.train()
    assert not torch.allclose(block(v, l, mask_v, mask_l)[0], eval_v)
    assert isinstance(_block().drop_path, torch.nn.Identity)


def test_bad_inputs_raise_clear_errors():
    block = _block()
    v, l, mask_v, mask_l = _inputs()  # noqa: E741
    with pytest.raises(ValueError, match="attention_mask_l"):
        block(v, l, mask_v, mask_l[:, :2])
    with pytest.raises(ValueError, match="attention_mask_v"):
        block(v, l, mask_v.float(), mask_l)
    with pytest.raises(ValueError, match=r"l \(text tokens\)"):
        block(v, l[..., :4], mask_v, mask_l)
    with pytest.raises(ValueError, match="same batch size"):
        block(v, l[:1], None, None)
    with pytest.raises(ValueError, match="divisible"):
        BiMultiHeadAttention(V_DIM, L_DIM, 15, 2)
