"""Tests for detr_ext.layers.transformer: BaseTransformerLayer and TransformerLayerSequence."""

import pytest
import torch
from torch import nn

from detr_ext.layers.attention import MultiheadAttention
from detr_ext.layers.mlp import FFN
from detr_ext.layers.transformer import BaseTransformerLayer, TransformerLayerSequence

C = 8


def _layer(operation_order, num_attn=None):
    num_attn = sum(op.endswith("attn") for op in operation_order) if num_attn is None else num_attn
    return (
        BaseTransformerLayer(
            attn=[MultiheadAttention(C, 2) for _ in range(num_attn)],
            ffn=FFN(C, 16),
            norm=nn.LayerNorm(C),
            operation_order=operation_order,
        )
        .double()
        .eval()
    )


def _randomize_norms(layer):
    with torch.no_grad():
        for norm in layer.norms:
            norm.weight.normal_()
            norm.bias.normal_()


def test_module_counts_and_detrex_keys():
    order = ("self_attn", "norm", "cross_attn", "norm", "ffn", "norm")
    layer = _layer(order)
    assert (len(layer.attentions), len(layer.ffns), len(layer.norms)) == (2, 1, 3)
    assert layer.embed_dim == C and layer.pre_norm is False
    keys = set(layer.state_dict())
    assert {"attentions.1.attn.in_proj_weight", "ffns.0.layers.0.0.weight", "norms.2.bias"} <= keys
    # Single ffn / norm modules are deep-copied per occurrence, not shared.
    assert layer.norms[0] is not layer.norms[1]
    assert layer.norms[0].weight is not layer.norms[1].weight

    shared = MultiheadAttention(C, 2)
    copied = BaseTransformerLayer(shared, FFN(C, 16), nn.LayerNorm(C), order)
    assert copied.attentions[0] is not copied.attentions[1] and copied.attentions[0] is not shared

    encoder = _layer(("self_attn", "norm", "ffn", "norm"))
    assert (len(encoder.attentions), len(encoder.ffns), len(encoder.norms)) == (1, 1, 2)


def test_post_norm_decoder_equals_manual_composition():
    order = ("self_attn", "norm", "cross_attn", "norm", "ffn", "norm")
    layer = _layer(order)
    _randomize_norms(layer)
    query = torch.randn(2, 3, C, dtype=torch.float64)
    memory = torch.randn(2, 5, C, dtype=torch.float64)
    query_pos = torch.randn_like(query)
    memory_pos = torch.randn_like(memory)
    memory_mask = torch.zeros(2, 5, dtype=torch.bool)
    memory_mask[1, 3:] = True
    self_mask = torch.zeros(3, 3, dtype=torch.bool)
    self_mask[0, 2] = True

    out = layer(
        query,
        memory,
        memory,
        query_pos=query_pos,
        key_pos=memory_pos,
        attn_masks=[self_mask, None],
        key_padding_mask=memory_mask,
    )

    a, f, n = layer.attentions, layer.ffns, layer.norms
    x = n[0](a[0](query, query, query, query_pos=query_pos, key_pos=query_pos, attn_mask=self_mask))
    x = n[1](
        a[1](
            x, memory, memory, query_pos=query_pos, key_pos=memory_pos, key_padding_mask=memory_mask
        )
    )
    expected = n[2](f[0](x))
    torch.testing.assert_close(out, expected)
    # The masks were really used.
    assert not torch.allclose(out, layer(query, memory, memory, query_pos, memory_pos))


def test_pre_norm_uses_un_normed_residual():
    order = ("norm", "self_attn", "norm", "ffn")
    layer = _layer(order)
    _randomize_norms(layer)
    assert layer.pre_norm is True
    query = torch.randn(2, 4, C, dtype=torch.float64)
    query_pos = torch.randn_like(query)
    padding = torch.tensor([[False, False, False, True], [False] * 4])

    out = layer(query, query_pos=query_pos, query_key_padding_mask=padding)

    a, f, n = layer.attentions, layer.ffns, layer.norms
    normed = n[0](query)
    x = a[0](normed, normed, normed, identity=query, query_pos=query_pos, key_padding_mask=padding)
    expected = f[0](n[1](x), identity=x)
    torch.testing.assert_close(out, expected)
    # A post-norm reading (residual = normed input) would give something else.
    wrong = f[0](n[1](a[0](normed, query_pos=query_pos, key_padding_mask=padding)))
    assert not torch.allclose(out, wrong)


class _RecordingAttention(nn.Module):
    """Records the keyword arguments it was called with and returns query + 1."""

    embed_dim = C

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, query, key=None, value=None, identity=None, **kwargs):
        self.calls.append(dict(key=key, value=value, identity=identity, **kwargs))
        return query + 1


def test_attention_receives_keywords_and_extra_kwargs():
    order = ("self_attn", "norm", "cross_attn", "norm", "ffn", "norm")
    layer = BaseTransformerLayer(
        [_RecordingAttention(), _RecordingAttention()], FFN(C, 16), nn.Identity(), order
    )
    query = torch.randn(1, 2, C)
    memory = torch.randn(1, 6, C)
    qpos, kpos = torch.randn_like(query), torch.randn_like(memory)
    qmask, kmask = torch.zeros(1, 2, dtype=torch.bool), torch.zeros(1, 6, dtype=torch.bool)
    shared_mask = torch.zeros(2, 2, dtype=torch.bool)
    refs = torch.rand(1, 2, 1, 2)
    layer(query, memory, memory, qpos, kpos, shared_mask, qmask, kmask, reference_points=refs)

    self_call = layer.attentions[0].calls[0]
    assert self_call["key"] is query and self_call["value"] is query
    assert self_call["query_pos"] is qpos and self_call["key_pos"] is qpos
    assert self_call["key_padding_mask"] is qmask and self_call["attn_mask"] is shared_mask
    assert self_call["identity"] is None and self_call["reference_points"] is refs
    cross_call = layer.attentions[1].calls[0]
    assert cross_call["key"] is memory and cross_call["key_pos"] is kpos
    assert cross_call["key_padding_mask"] is kmask and cross_call["attn_mask"] is shared_mask
    assert cross_call["reference_points"] is refs


def test_invalid_configurations_raise():
    with pytest.raises(ValueError, match="unknown"):
        _layer(("self_attn", "norm", "mlp"), num_attn=1)
    with pytest.raises(ValueError, match=r"expected 2 attention module\(s\).*got 1"):
        _layer(("self_attn", "norm", "cross_attn", "norm", "ffn", "norm"), num_attn=1)
    with pytest.raises(ValueError, match="got 3"):
        BaseTransformerLayer(
            [MultiheadAttention(C, 2)], [FFN(C, 16)], [nn.LayerNorm(C)] * 3, ("self_attn", "norm")
        )
    layer = _layer(("self_attn", "norm", "ffn", "norm"))
    with pytest.raises(ValueError, match="attn_masks"):
        layer(torch.randn(1, 2, C, dtype=torch.float64), attn_masks=[None, None])


def test_layer_sequence_copies_and_chains():
    layer = _layer(("self_attn", "norm", "ffn", "norm"))
    stack = TransformerLayerSequence(layer, num_layers=3)
    assert len(stack.layers) == 3 and stack.embed_dim == C
    assert stack.layers[0] is not layer and stack.layers[0] is not stack.layers[1]
    assert "layers.2.attentions.0.attn.out_proj.weight" in stack.state_dict()
    with torch.no_grad():
        for block in stack.layers:
            block.ffns[0].layers[1].weight.normal_()
    query = torch.randn(2, 3, C, dtype=torch.float64)
    pos = torch.randn_like(query)
    expected = query
    for block in stack.layers:
        expected = block(expected, query_pos=pos)
    torch.testing.assert_close(stack(query, query_pos=pos), expected)
    with pytest.raises(ValueError, match="expected 3 layer"):
        TransformerLayerSequence([layer, layer], num_layers=3)
