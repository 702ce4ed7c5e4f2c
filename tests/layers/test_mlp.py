"""Tests for detr_ext.layers.mlp: FFN and MLP (layout must match detrex names)."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from detr_ext.layers.mlp import FFN, MLP


def _shapes(module):
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def test_ffn_state_dict_matches_detrex_layout():
    ffn = FFN(embed_dim=16, feedforward_dim=32)
    assert _shapes(ffn) == {
        "layers.0.0.weight": (32, 16),
        "layers.0.0.bias": (32,),
        "layers.1.weight": (16, 32),
        "layers.1.bias": (16,),
    }
    assert isinstance(ffn.layers[0][1], nn.ReLU)
    assert isinstance(ffn.layers[0][2], nn.Dropout)
    assert isinstance(ffn.layers[2], nn.Dropout)


def test_ffn_three_fcs_and_output_dim_and_no_bias():
    ffn = FFN(embed_dim=4, feedforward_dim=6, output_dim=5, num_fcs=3, add_identity=False)
    assert _shapes(ffn) == {
        "layers.0.0.weight": (6, 4),
        "layers.0.0.bias": (6,),
        "layers.1.0.weight": (6, 6),
        "layers.1.0.bias": (6,),
        "layers.2.weight": (5, 6),
        "layers.2.bias": (5,),
    }
    assert ffn(torch.randn(2, 3, 4)).shape == (2, 3, 5)
    no_bias = FFN(embed_dim=4, feedforward_dim=6, fc_bias=False)
    assert set(no_bias.state_dict()) == {"layers.0.0.weight", "layers.1.weight"}


def test_ffn_forward_matches_manual_computation():
    ffn = FFN(embed_dim=4, feedforward_dim=8).double()
    x = torch.randn(2, 3, 4, dtype=torch.float64)
    hidden = F.relu(F.linear(x, ffn.layers[0][0].weight, ffn.layers[0][0].bias))
    out = F.linear(hidden, ffn.layers[1].weight, ffn.layers[1].bias)
    x_copy = x.clone()
    torch.testing.assert_close(ffn(x), x + out)
    torch.testing.assert_close(x, x_copy)  # inplace ReLU must not touch the input
    identity = torch.randn_like(x)
    torch.testing.assert_close(ffn(x, identity), identity + out)
    ffn.add_identity = False
    torch.testing.assert_close(ffn(x), out)


def test_ffn_activation_factory_and_module():
    factory = FFN(embed_dim=4, feedforward_dim=8, num_fcs=3, activation=nn.GELU)
    assert isinstance(factory.layers[0][1], nn.GELU)
    assert factory.layers[0][1] is not factory.layers[1][1]
    shared = nn.SiLU()
    given = FFN(embed_dim=4, feedforward_dim=8, activation=shared)
    assert given.layers[0][1] is shared
    x = torch.randn(3, 4)
    hidden = F.silu(F.linear(x, given.layers[0][0].weight, given.layers[0][0].bias))
    expected = x + F.linear(hidden, given.layers[1].weight, given.layers[1].bias)
    torch.testing.assert_close(given(x), expected)


def test_ffn_invalid_arguments_raise():
    with pytest.raises(ValueError, match="num_fcs"):
        FFN(num_fcs=1)
    with pytest.raises(ValueError, match="activation"):
        FFN(activation=3)
    with pytest.raises(ValueError, match="output_dim"):
        FFN(embed_dim=4, feedforward_dim=8, output_dim=5)(torch.randn(2, 4))


def test_mlp_state_dict_and_forward():
    mlp = MLP(input_dim=4, hidden_dim=6, output_dim=3, num_layers=3).double()
    assert _shapes(mlp) == {
        "layers.0.weight": (6, 4),
        "layers.0.bias": (6,),
        "layers.1.weight": (6, 6),
        "layers.1.bias": (6,),
        "layers.2.weight": (3, 6),
        "layers.2.bias": (3,),
    }
    with torch.no_grad():
        mlp.layers[2].bias.fill_(-10.0)  # makes the output negative unless a ReLU clips it
    x = torch.randn(2, 5, 4, dtype=torch.float64)
    h = F.relu(F.linear(x, mlp.layers[0].weight, mlp.layers[0].bias))
    h = F.relu(F.linear(h, mlp.layers[1].weight, mlp.layers[1].bias))
    expected = F.linear(h, mlp.layers[2].weight, mlp.layers[2].bias)
    out = mlp(x)
    torch.testing.assert_close(out, expected)
    # No ReLU after the last layer: box regression deltas can be negative.
    assert (out < 0).all()


def test_mlp_single_layer_and_invalid():
    mlp = MLP(4, 99, 2, 1)
    assert _shapes(mlp) == {"layers.0.weight": (2, 4), "layers.0.bias": (2,)}
    with pytest.raises(ValueError, match="num_layers"):
        MLP(4, 4, 4, 0)


def test_mlp_keys_match_detrex_bbox_embed():
    head = nn.ModuleList([MLP(256, 256, 4, 3)])
    assert [k for k in head.state_dict() if k.endswith("weight")] == [
        "0.layers.0.weight",
        "0.layers.1.weight",
        "0.layers.2.weight",
    ]
