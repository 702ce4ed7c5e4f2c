"""TimmBackbone over small timm models, and the detectron2 ResNet builder."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import timm
import torch
import torchvision
from detectron2.layers import FrozenBatchNorm2d
from detectron2.modeling.backbone import Backbone
from torch import nn

from detr_ext.modeling.backbones import TimmBackbone, build_resnet_backbone

_REPO = Path(__file__).resolve().parents[2]
_KEY_FILES = [_REPO / "tests" / "fixtures" / "state_dict_keys"]


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


# ---------------------------------------------------------------------------- TimmBackbone


@pytest.mark.parametrize(
    ("model_name", "strides", "channels"),
    [("resnet18", (4, 8, 16), (64, 128, 256)), ("convnext_atto", (8, 16, 32), (80, 160, 320))],
)
def test_timm_outputs_match_output_shape(model_name, strides, channels):
    backbone = TimmBackbone(model_name, out_indices=(1, 2, 3))
    assert isinstance(backbone, Backbone)
    outputs = backbone(torch.randn(2, 3, 64, 64))
    shapes = backbone.output_shape()
    assert list(outputs) == ["p1", "p2", "p3"] == backbone._out_features
    for name, stride, channel in zip(["p1", "p2", "p3"], strides, channels):
        assert (shapes[name].channels, shapes[name].stride) == (channel, stride)
        assert outputs[name].shape == (2, channel, 64 // stride, 64 // stride)


def test_timm_negative_out_index_and_out_features_subset():
    backbone = TimmBackbone("resnet18", out_indices=(2, -1), out_features=["p4"])
    outputs = backbone(torch.randn(1, 3, 64, 64))
    assert list(outputs) == ["p4"]
    assert outputs["p4"].shape == (1, 512, 2, 2)
    assert backbone.output_shape()["p4"].stride == 32


def test_timm_freeze_at_resnet_freezes_stem_and_layer1():
    backbone = TimmBackbone("resnet18", out_indices=(1, 2, 3), freeze_at=2)
    frozen = {name for name, p in backbone.named_parameters() if not p.requires_grad}
    top_level = {name.split(".")[1] for name in frozen}
    assert top_level == {"conv1", "bn1", "layer1"}
    assert all(p.requires_grad for n, p in backbone.named_parameters() if ".layer2." in n)

    backbone.train()
    model = backbone.timm_model
    assert not model.bn1.training and not model.layer1[0].bn1.training
    assert model.layer2[0].bn1.training
    # Frozen BatchNorm statistics must not move in a training step.
    before = model.layer1[0].bn1.running_mean.clone()
    backbone(torch.randn(2, 3, 64, 64))
    assert torch.equal(model.layer1[0].bn1.running_mean, before)


def test_timm_freeze_at_convnext_freezes_stem_and_stage0():
    backbone = TimmBackbone("convnext_atto", out_indices=(1, 2, 3), freeze_at=1)
    frozen = {name.split(".")[1] for name, p in backbone.named_parameters() if not p.requires_grad}
    trainable = {name.split(".")[1] for name, p in backbone.named_parameters() if p.requires_grad}
    assert frozen == {"stem_0", "stem_1", "stages_0"}
    assert trainable == {"stages_1", "stages_2", "stages_3"}


def test_timm_freeze_at_zero_freezes_nothing():
    backbone = TimmBackbone("resnet18", out_indices=(1,))
    assert all(p.requires_grad for p in backbone.parameters())


@pytest.mark.parametrize("wrapper_key", [None, "state_dict", "model"])
def test_timm_loads_local_checkpoint(tmp_path, wrapper_key):
    source = timm.create_model("resnet18")
    with torch.no_grad():
        source.layer1[0].bn1.running_mean.uniform_()
    state = source.state_dict()
    path = tmp_path / "resnet18.pth"
    torch.save(state if wrapper_key is None else {wrapper_key: state}, path)

    backbone = TimmBackbone("resnet18", checkpoint_path=str(path), out_indices=(1, 2))
    loaded = backbone.timm_model.state_dict()
    assert set(loaded) < set(state)
    for name, value in loaded.items():
        assert torch.equal(value, state[name]), name


@pytest.mark.parametrize("frozen_bn", [FrozenBatchNorm2d, torchvision.ops.FrozenBatchNorm2d])
def test_timm_with_frozen_batchnorm_builds_and_loads_statistics(tmp_path, frozen_bn):
    """timm passes device= / dtype= to norm layers, which FrozenBatchNorm2d did not take:
    TypeError for the documented norm_layer=FrozenBatchNorm2d."""
    source = timm.create_model("resnet18")
    with torch.no_grad():
        source.layer1[0].bn1.running_mean.uniform_()
        source.layer1[0].bn1.running_var.uniform_(0.5, 2.0)
    path = tmp_path / "resnet18.pth"
    torch.save(source.state_dict(), path)
    backbone = TimmBackbone(
        "resnet18", norm_layer=frozen_bn, checkpoint_path=str(path), out_indices=(1, 2)
    )
    norms = [m for m in backbone.modules() if isinstance(m, frozen_bn)]
    assert len(norms) == 10 and not any(isinstance(m, nn.BatchNorm2d) for m in backbone.modules())
    frozen = backbone.timm_model.layer1[0].bn1
    assert torch.equal(frozen.running_mean, source.layer1[0].bn1.running_mean)
    assert torch.equal(frozen.running_var, source.layer1[0].bn1.running_var)
    source.eval()
    image = torch.randn(1, 3, 64, 64)
    expected = source.layer1(source.maxpool(source.act1(source.bn1(source.conv1(image)))))
    torch.testing.assert_close(backbone(image)["p1"], expected, rtol=1e-5, atol=1e-5)


def test_timm_missing_checkpoint_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        TimmBackbone("resnet18", checkpoint_path=str(tmp_path / "missing.pth"))


def test_timm_unknown_model_suggests_names():
    with pytest.raises(ValueError, match=r"unknown timm model 'resnet_18'.*resnet18"):
        TimmBackbone("resnet_18")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(out_indices=(1, 7)), r"out_indices in \[-5, 5\).*got \(1, 7\)"),
        (dict(out_indices=(4, -1)), "distinct"),
        (dict(out_indices=(1, 2), out_features=["p3"]), r"out_features among \['p1', 'p2'\]"),
        (dict(freeze_at=6), r"freeze_at in \[0, 5\]"),
        (dict(features_only=False), "features_only=True"),
    ],
)
def test_timm_invalid_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TimmBackbone("resnet18", **kwargs)


def test_timm_rejects_wrong_input_channels():
    backbone = TimmBackbone("resnet18", out_indices=(1,))
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\].*\(1, 1, 32, 32\)"):
        backbone(torch.randn(1, 1, 32, 32))


# ---------------------------------------------------------------------------- ResNet builder


def test_resnet18_output_shapes_and_names():
    backbone = build_resnet_backbone(depth=18, out_features=("res2", "res3", "res4", "res5"))
    outputs = backbone(torch.randn(1, 3, 64, 64))
    shapes = backbone.output_shape()
    for name, channels, stride in [
        ("res2", 64, 4),
        ("res3", 128, 8),
        ("res4", 256, 16),
        ("res5", 512, 32),
    ]:
        assert (shapes[name].channels, shapes[name].stride) == (channels, stride)
        assert outputs[name].shape == (1, channels, 64 // stride, 64 // stride)
    keys = set(backbone.state_dict())
    assert {"stem.conv1.weight", "res2.0.conv1.norm.weight", "res3.0.shortcut.weight"} <= keys
    assert "res2.0.shortcut.weight" not in keys  # BasicBlock res2 keeps 64 channels
    # freeze_at=1 (default): the stem is frozen, the stages are not.
    assert not backbone.stem.conv1.weight.requires_grad
    assert backbone.res2[0].conv1.weight.requires_grad


def test_resnet50_matches_detrex_backbone_keys():
    backbone = build_resnet_backbone(depth=50)
    shapes = backbone.output_shape()
    assert {k: (v.channels, v.stride) for k, v in shapes.items()} == {
        "res3": (512, 8),
        "res4": (1024, 16),
        "res5": (2048, 32),
    }
    expected = _reference_keys("detrex_dino_r50_4scale.txt", "backbone.")
    got = {name: tuple(value.shape) for name, value in backbone.state_dict().items()}
    assert got == expected


def test_resnet_rejects_bad_arguments():
    with pytest.raises(ValueError, match="expected depth in"):
        build_resnet_backbone(depth=20)
    with pytest.raises(ValueError, match="res5_dilation=1"):
        build_resnet_backbone(depth=18, res5_dilation=2)
    with pytest.raises(ValueError, match="out_features among"):
        build_resnet_backbone(depth=18, out_features=("p3",))


def test_resnet_base_channels_makes_a_slimmer_basic_resnet():
    import torch

    from detr_ext.modeling.backbones import build_resnet_backbone

    slim = build_resnet_backbone(depth=18, base_channels=32, norm="BN", freeze_at=0)
    shapes = slim.output_shape()
    assert [shapes[name].channels for name in ("res3", "res4", "res5")] == [64, 128, 256]
    features = slim(torch.randn(1, 3, 64, 64))
    assert features["res5"].shape == (1, 256, 2, 2)
    with pytest.raises(ValueError, match="base_channels other than 64 needs depth 18 or 34"):
        build_resnet_backbone(depth=50, base_channels=32)


def _torchvision_to_detectron2_resnet_key(name: str) -> str:
    """torchvision ResNet parameter name -> detectron2 ResNet name (as detectron2's and the
    DETR converters map them): ``layer4.0.bn2.weight`` -> ``res5.0.conv2.norm.weight``."""
    name = re.sub(r"^conv1\.", "stem.conv1.", name)
    name = re.sub(r"^bn1\.", "stem.conv1.norm.", name)
    name = re.sub(r"^layer(\d)\.", lambda match: f"res{int(match.group(1)) + 1}.", name)
    name = re.sub(r"\.bn(\d)\.", r".conv\1.norm.", name)
    name = name.replace(".downsample.0.", ".shortcut.").replace(".downsample.1.", ".shortcut.norm.")
    return name


def _random_frozen_bn_statistics(model: torch.nn.Module, seed: int) -> None:
    """Give every FrozenBatchNorm2d non-trivial statistics, so that a wrong network shows."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, torchvision.ops.FrozenBatchNorm2d):
            size = module.weight.shape
            module.weight.copy_(torch.rand(size, generator=generator) + 0.5)
            module.bias.copy_(0.1 * torch.randn(size, generator=generator))
            module.running_mean.copy_(0.1 * torch.randn(size, generator=generator))
            module.running_var.copy_(torch.rand(size, generator=generator) + 0.5)


@torch.no_grad()
def test_resnet50_dc5_matches_torchvision_dilated_resnet():
    """DETR-DC5's published weights were trained in torchvision's dilated ResNet-50: with the
    same weights, our DC5 res5 must equal torchvision's layer4 (first res5 block undilated);
    detectron2's all-dilated res5 gives other outputs."""
    torch.manual_seed(0)
    reference = torchvision.models.resnet50(
        replace_stride_with_dilation=[False, False, True],
        norm_layer=torchvision.ops.FrozenBatchNorm2d,
    )
    _random_frozen_bn_statistics(reference, seed=1)
    reference = reference.double().eval()
    weights = {
        _torchvision_to_detectron2_resnet_key(name): value
        for name, value in reference.state_dict().items()
        if not name.startswith("fc.")
    }

    backbones = {}
    for style in ("torchvision", "detectron2"):
        backbone = build_resnet_backbone(
            depth=50, out_features=("res5",), res5_dilation=2, res5_dilation_style=style
        )
        backbone.load_state_dict(weights, strict=True)
        backbones[style] = backbone.double().eval()
    assert backbones["torchvision"].output_shape()["res5"].stride == 16

    images = torch.randn(
        2, 3, 80, 96, dtype=torch.float64, generator=torch.Generator().manual_seed(2)
    )
    stem = torch.nn.Sequential(reference.conv1, reference.bn1, reference.relu, reference.maxpool)
    expected = reference.layer4(reference.layer3(reference.layer2(reference.layer1(stem(images)))))
    assert expected.shape == (2, 2048, 5, 6)
    ours = backbones["torchvision"](images)["res5"]
    torch.testing.assert_close(ours, expected, rtol=1e-10, atol=1e-10)
    all_dilated = backbones["detectron2"](images)["res5"]
    assert all_dilated.shape == expected.shape
    assert (all_dilated - expected).abs().max() > 1e-3 * expected.abs().max()
    res5 = backbones["torchvision"].res5
    assert [block.conv2.dilation for block in res5] == [(1, 1), (2, 2), (2, 2)]
    assert [block.conv2.stride for block in res5] == [(1, 1), (1, 1), (1, 1)]


def test_resnet_rejects_unknown_dilation_style():
    with pytest.raises(ValueError, match=r"res5_dilation_style in .*got 'caffe2'"):
        build_resnet_backbone(depth=50, res5_dilation=2, res5_dilation_style="caffe2")
