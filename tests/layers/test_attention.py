"""Tests for detr_ext.layers.attention.MultiheadAttention."""

import pytest
import torch
import torch.nn.functional as F

from detr_ext.layers.attention import MultiheadAttention

EMBED_DIM, NUM_HEADS = 8, 2


def _reference_attention(module, query, key, value, key_padding_mask=None):
    """Multi-head attention written out from the module's raw weights: [B, Q, C]."""
    attn = module.attn
    w_q, w_k, w_v = attn.in_proj_weight.chunk(3)
    b_q, b_k, b_v = attn.in_proj_bias.chunk(3)
    batch, num_queries, channels = query.shape
    head_dim = channels // NUM_HEADS

    def heads(x):
        return x.reshape(batch, -1, NUM_HEADS, head_dim).transpose(1, 2)

    q = heads(F.linear(query, w_q, b_q))
    k = heads(F.linear(key, w_k, b_k))
    v = heads(F.linear(value, w_v, b_v))
    logits = q @ k.transpose(-1, -2) / head_dim**0.5
    if key_padding_mask is not None:
        logits = logits.masked_fill(key_padding_mask[:, None, None, :], float("-inf"))
    out = (logits.softmax(-1) @ v).transpose(1, 2).reshape(batch, num_queries, channels)
    return F.linear(out, attn.out_proj.weight, attn.out_proj.bias)


@pytest.fixture
def module():
    return MultiheadAttention(EMBED_DIM, NUM_HEADS).double().eval()


def test_state_dict_keys_match_detrex(module):
    shapes = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    assert shapes == {
        "attn.in_proj_weight": (3 * EMBED_DIM, EMBED_DIM),
        "attn.in_proj_bias": (3 * EMBED_DIM,),
        "attn.out_proj.weight": (EMBED_DIM, EMBED_DIM),
        "attn.out_proj.bias": (EMBED_DIM,),
    }


def test_cross_attention_matches_manual_computation_with_pos(module):
    query = torch.randn(2, 3, EMBED_DIM, dtype=torch.float64)
    key = torch.randn(2, 5, EMBED_DIM, dtype=torch.float64)
    value = torch.randn(2, 5, EMBED_DIM, dtype=torch.float64)
    query_pos = torch.randn_like(query)
    key_pos = torch.randn_like(key)
    identity = torch.randn_like(query)

    out = module(query, key, value, identity=identity, query_pos=query_pos, key_pos=key_pos)
    # Positions go into q and k only; value stays raw; the residual is the given identity.
    expected = identity + _reference_attention(module, query + query_pos, key + key_pos, value)
    torch.testing.assert_close(out, expected)


def test_self_attention_defaults(module):
    query = torch.randn(2, 4, EMBED_DIM, dtype=torch.float64)
    query_pos = torch.randn_like(query)
    out = module(query, query_pos=query_pos)
    # key = query, value = key (raw query), key_pos = query_pos, identity = raw query.
    expected = query + _reference_attention(module, query + query_pos, query + query_pos, query)
    torch.testing.assert_close(out, expected)


def test_query_pos_not_reused_for_key_of_other_shape(module):
    query = torch.randn(2, 3, EMBED_DIM, dtype=torch.float64)
    key = torch.randn(2, 5, EMBED_DIM, dtype=torch.float64)
    query_pos = torch.randn_like(query)
    out = module(query, key, query_pos=query_pos)
    expected = query + _reference_attention(module, query + query_pos, key, key)
    torch.testing.assert_close(out, expected)


def test_key_padding_mask_makes_masked_keys_irrelevant(module):
    query = torch.randn(2, 3, EMBED_DIM, dtype=torch.float64)
    key = torch.randn(2, 5, EMBED_DIM, dtype=torch.float64)
    value = torch.randn(2, 5, EMBED_DIM, dtype=torch.float64)
    mask = torch.zeros(2, 5, dtype=torch.bool)
    mask[0, 3:] = True
    mask[1, 1] = True

    out = module(query, key, value, key_padding_mask=mask)
    key2, value2 = key.clone(), value.clone()
    key2[mask] = torch.randn_like(key2[mask]) * 10
    value2[mask] = torch.randn_like(value2[mask]) * 10
    out2 = module(query, key2, value2, key_padding_mask=mask)
    torch.testing.assert_close(out, out2)
    torch.testing.assert_close(out, query + _reference_attention(module, query, key, value, mask))
    # Without the mask the perturbation must matter, so the check above is meaningful.
    assert not torch.allclose(module(query, key, value), module(query, key2, value2))


def test_batch_first_false_equals_transposed_batch_first(module):
    seq_first = MultiheadAttention(EMBED_DIM, NUM_HEADS, batch_first=False).double().eval()
    seq_first.load_state_dict(module.state_dict())
    query = torch.randn(2, 3, EMBED_DIM, dtype=torch.float64)
    key = torch.randn(2, 5, EMBED_DIM, dtype=torch.float64)
    query_pos = torch.randn_like(query)
    key_pos = torch.randn_like(key)
    mask = torch.tensor([[False] * 4 + [True], [False] * 5])

    out = module(query, key, query_pos=query_pos, key_pos=key_pos, key_padding_mask=mask)
    out_seq = seq_first(
        query.transpose(0, 1),
        key.transpose(0, 1),
        query_pos=query_pos.transpose(0, 1),
        key_pos=key_pos.transpose(0, 1),
        key_padding_mask=mask,
    )
    assert out_seq.shape == (3, 2, EMBED_DIM)
    torch.testing.assert_close(out_seq.transpose(0, 1), out)


def test_attn_mask_blocks_positions(module):
    query = torch.randn(1, 3, EMBED_DIM, dtype=torch.float64)
    # Each query may only see itself, so the result is value-of-self attention per token.
    attn_mask = ~torch.eye(3, dtype=torch.bool)
    out = module(query, attn_mask=attn_mask)
    attn = module.attn
    v = F.linear(query, attn.in_proj_weight.chunk(3)[2], attn.in_proj_bias.chunk(3)[2])
    expected = query + F.linear(v, attn.out_proj.weight, attn.out_proj.bias)
    torch.testing.assert_close(out, expected)


def test_extra_kwargs_are_ignored(module):
    query = torch.randn(1, 3, EMBED_DIM, dtype=torch.float64)
    torch.testing.assert_close(module(query, reference_points=torch.zeros(1)), module(query))


def test_invalid_configuration_raises():
    with pytest.raises(ValueError, match="divisible"):
        MultiheadAttention(10, 3)
    with pytest.raises(ValueError, match="3-D"):
        MultiheadAttention(EMBED_DIM, NUM_HEADS)(torch.randn(3, EMBED_DIM))
