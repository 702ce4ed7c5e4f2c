"""ChannelMapper: output levels, detrex parameter names, and the conv-norm-act math."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from detectron2.layers import ShapeSpec
from torch import nn

from detr_ext.modeling.necks import ChannelMapper

_REPO = Path(__file__).resolve().parents[2]
_KEY_FILES = [_REPO / "tests" / "fixtures" / "state_dict_keys"]

R50_SHAPES = {
    "res2": ShapeSpec(channels=256, stride=4),
    "res3": ShapeSpec(channels=512, stride=8),
    "res4": ShapeSpec(channels=1024, stride=16),
    "res5": ShapeSpec(channels=2048, stride=32),
}
SMALL_SHAPES = {
    "p1": ShapeSpec(channels=6, stride=4),
    "p2": ShapeSpec(channels=10, stride=8),
    "p3": ShapeSpec(channels=12, stride=16),
}


def _reference_keys(model_file: str, prefix: str) -> dict[str, tuple[int, ...]]:
    """``{name without prefix: shape}`` from a reference state-dict listing in tests/fixtures."""
    path = next((d / model_file for d in _KEY_FILES if (d / model_file).is_file()), None)
    assert path is not None, f"reference key listing {model_file} not in {_KEY_FILES}"
    keys = {}
    for line in path.read_text().splitlines():
        name, _, rest = line.partition(" ")
        if name.startswith(prefix):
            shape = rest.rsplit(" ", 1)[0].strip("()").replace(" ", "")
            keys[name[len(prefix) :]] = tuple(int(s) for s in shape.split(",") if s)
    return keys


def _features(shapes: dict[str, ShapeSpec], image_size: int, batch: int = 1) -> dict:
    return {
        name: torch.randn(batch, s.channels, image_size // s.stride, image_size // s.stride)
        for name, s in shapes.items()
    }


def test_dino_4scale_matches_detrex_neck_keys_and_shapes():
    neck = ChannelMapper(
        R50_SHAPES,
        in_features=["res3", "res4", "res5"],
        out_channels=256,
        norm_layer=nn.GroupNorm(32, 256),
        num_outs=4,
    )
    expected = _reference_keys("detrex_dino_r50_4scale.txt", "neck.")
    got = {name: tuple(value.shape) for name, value in neck.state_dict().items()}
    assert got == expected

    outputs = neck(_features(R50_SHAPES, image_size=128))
    specs = neck.output_shapes()
    assert [s.stride for s in specs] == [8, 16, 32, 64]
    assert len(outputs) == 4
    for output, spec in zip(outputs, specs):
        assert output.shape == (1, 256, 128 // spec.stride, 128 // spec.stride)


def test_two_extra_levels_chain_from_last_input():
    neck = ChannelMapper(SMALL_SHAPES, ["p1", "p2", "p3"], out_channels=8, num_outs=5)
    features = _features(SMALL_SHAPES, image_size=64, batch=2)
    outputs = neck(features)
    assert [tuple(o.shape) for o in outputs] == [
        (2, 8, 16, 16),
        (2, 8, 8, 8),
        (2, 8, 4, 4),
        (2, 8, 2, 2),
        (2, 8, 1, 1),
    ]
    assert [s.stride for s in neck.output_shapes()] == [4, 8, 16, 32, 64]
    assert neck.extra_convs[0].conv.in_channels == 12
    assert neck.extra_convs[1].conv.in_channels == 8
    first_extra = neck.extra_convs[0](features["p3"])
    torch.testing.assert_close(outputs[3], first_extra)
    torch.testing.assert_close(outputs[4], neck.extra_convs[1](first_extra))


def test_norm_and_activation_are_copied_per_conv():
    norm, activation = nn.GroupNorm(2, 8), nn.ReLU()
    neck = ChannelMapper(
        SMALL_SHAPES, ["p1", "p2"], 8, norm_layer=norm, activation=activation, num_outs=3
    )
    norms = [m.norm for m in [*neck.convs, *neck.extra_convs]]
    assert all(isinstance(n, nn.GroupNorm) for n in norms)
    assert len({id(n) for n in norms} | {id(norm)}) == 4
    assert all(m.activation is not activation for m in neck.convs)


def test_conv_norm_act_math_matches_functional():
    neck = ChannelMapper(
        {"c": ShapeSpec(channels=6, stride=8)},
        ["c"],
        out_channels=4,
        kernel_size=3,
        norm_layer=nn.GroupNorm(2, 4),
        activation=nn.ReLU(),
    ).double()
    with torch.no_grad():
        neck.convs[0].norm.weight.uniform_(0.5, 1.5)
        neck.convs[0].norm.bias.uniform_(-0.5, 0.5)
    x = torch.randn(2, 6, 5, 7, dtype=torch.float64)
    (output,) = neck({"c": x})
    layer = neck.convs[0]
    expected = F.relu(
        F.group_norm(
            F.conv2d(x, layer.conv.weight, layer.conv.bias, padding=1),
            2,
            layer.norm.weight,
            layer.norm.bias,
            eps=layer.norm.eps,
        )
    )
    assert output.shape == (2, 4, 5, 7)
    torch.testing.assert_close(output, expected)


def test_invalid_configuration_and_inputs():
    with pytest.raises(ValueError, match=r"\['p9'\] not found.*\['p1', 'p2', 'p3'\]"):
        ChannelMapper(SMALL_SHAPES, ["p1", "p9"], 8)
    with pytest.raises(ValueError, match=r"num_outs >= len\(in_features\) = 3, got num_outs=2"):
        ChannelMapper(SMALL_SHAPES, ["p1", "p2", "p3"], 8, num_outs=2)
    neck = ChannelMapper(SMALL_SHAPES, ["p1", "p2"], 8)
    with pytest.raises(KeyError, match="missing"):
        neck({"p1": torch.randn(1, 6, 4, 4)})
    with pytest.raises(ValueError, match=r"'p2' as \[B, 10, H, W\].*got shape \(1, 5, 2, 2\)"):
        neck({"p1": torch.randn(1, 6, 4, 4), "p2": torch.randn(1, 5, 2, 2)})


def test_a_norm_over_other_channels_is_refused_when_built():
    """It built, then failed at the first forward inside GroupNorm."""
    shapes = {"res5": ShapeSpec(channels=64, stride=32)}
    for norm in (nn.GroupNorm(32, 256), nn.BatchNorm2d(256)):
        with pytest.raises(ValueError, match=r"norm_layer over out_channels=128 channels"):
            ChannelMapper(shapes, ["res5"], 128, norm_layer=norm)
    ChannelMapper(shapes, ["res5"], 128, norm_layer=nn.GroupNorm(32, 128))


def test_the_shared_neck_follows_its_out_channels():
    from detectron2.config import LazyConfig, instantiate

    path = Path(__file__).resolve().parents[2] / "configs/common/models/resnet50_4scale.py"
    neck = LazyConfig.load(str(path)).neck
    neck.out_channels = 128
    mapper = instantiate(neck)
    assert {conv.norm.num_channels for conv in [*mapper.convs, *mapper.extra_convs]} == {128}
