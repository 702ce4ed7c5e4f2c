"""TimmBackbone checks from an audit: feature names for unsorted out_indices, channels-first maps
and any input size for Swin / ViT, the pixel statistics pretrained weights expect (and the
detector's warning when its config differs), and strict loading of checkpoint_path files."""

from __future__ import annotations

import ast
import logging
import math
import re

import pytest
import timm
import torch
from timm.models import adapt_input_conv

from detr_ext.modeling import DetectorBase
from detr_ext.modeling.backbones import TimmBackbone

_CHECKPOINT_LOGGER = "detr_ext.modeling.backbones.timm_checkpoint"
_IMAGENET = ([123.675, 116.28, 103.53], [58.395, 57.12, 57.375])


def _random_state_dict(model_name: str) -> dict[str, torch.Tensor]:
    """A timm classification model's state dict with random values (a fake checkpoint)."""
    state = timm.create_model(model_name, pretrained=False).state_dict()
    return {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in state.items()}


def _assert_loaded(backbone: TimmBackbone, expected: dict[str, torch.Tensor], to_full=None):
    """Every tensor of ``backbone.timm_model`` equals ``expected[to_full(name)]``."""
    loaded = backbone.timm_model.state_dict()
    assert loaded
    for name, value in loaded.items():
        source = to_full(name) if to_full else name
        assert torch.equal(value, expected[source]), name


# ---------------------------------------------------------------------- out_indices order


@pytest.mark.parametrize(
    ("out_indices", "names"),
    [((3, 1, 2), ["p1", "p2", "p3"]), ((-1, -2), ["p3", "p4"]), ((4, 2), ["p2", "p4"])],
)
def test_unsorted_out_indices_name_each_map_by_its_level(out_indices, names):
    backbone = TimmBackbone("resnet18", out_indices=out_indices).eval()
    shapes = backbone.output_shape()
    channels = {1: 64, 2: 128, 3: 256, 4: 512}
    assert list(shapes) == names == backbone._out_features
    with torch.no_grad():
        outputs = backbone(torch.randn(1, 3, 64, 64))
    assert list(outputs) == names
    for name in names:
        level = int(name[1:])
        stride = 2 ** (level + 1)
        assert (shapes[name].channels, shapes[name].stride) == (channels[level], stride)
        assert outputs[name].shape == (1, channels[level], 64 // stride, 64 // stride), name


def test_negative_out_index_out_of_range_names_the_range():
    with pytest.raises(ValueError, match=r"out_indices in \[-5, 5\).*got \(-6, 1\)"):
        TimmBackbone("resnet18", out_indices=(-6, 1))


# ---------------------------------------------------------------------- Swin / ViT inputs


@pytest.fixture(scope="module")
def swin():
    torch.manual_seed(0)
    return TimmBackbone("swin_tiny_patch4_window7_224", out_indices=(1, 2, 3)).eval()


@pytest.mark.parametrize("size", [(96, 160), (100, 132)])
def test_swin_maps_are_channels_first_at_any_size_divisible_by_its_patch(swin, size):
    """timm's Swin features are [B, H, W, C] and built for 224x224 only; (100, 132) is a
    multiple of the patch size 4 but not of the stride 32."""
    height, width = size
    image = torch.randn(1, 3, height, width)
    with torch.no_grad():
        outputs = swin(image)
        raw = swin.timm_model(image)  # NHWC, as timm declares in output_fmt
    shapes = swin.output_shape()
    assert {k: (s.channels, s.stride) for k, s in shapes.items()} == {
        "p1": (192, 8),
        "p2": (384, 16),
        "p3": (768, 32),
    }
    for (name, spec), nhwc in zip(shapes.items(), raw):
        expected = (
            1,
            spec.channels,
            math.ceil(height / spec.stride),
            math.ceil(width / spec.stride),
        )
        assert outputs[name].shape == expected, name
        torch.testing.assert_close(outputs[name], nhwc.permute(0, 3, 1, 2))


def test_swin_size_not_divisible_by_patch_names_the_constraint_and_config_key(swin):
    with pytest.raises(ValueError, match=r"patch size 4x4.*got 100x130.*model\.size_divisibility"):
        swin(torch.randn(1, 3, 100, 130))


def test_swin_with_strict_img_size_from_model_kwargs_names_the_size():
    backbone = TimmBackbone(
        "swin_tiny_patch4_window7_224", out_indices=(3,), model_kwargs={"strict_img_size": True}
    )
    with pytest.raises(ValueError, match=r"expected \(224, 224\) images.*got 96x160"):
        backbone(torch.randn(1, 3, 96, 160))


def test_vit_pads_its_input_to_the_patch_size():
    backbone = TimmBackbone("vit_tiny_patch16_224", out_indices=(5, 11)).eval()
    with torch.no_grad():
        outputs = backbone(torch.randn(1, 3, 50, 70))
    assert {k: tuple(v.shape) for k, v in outputs.items()} == {
        "p5": (1, 192, 4, 5),
        "p11": (1, 192, 4, 5),
    }


# ---------------------------------------------------------------------- pixel statistics


class _StatisticsDetector(DetectorBase):
    """Just the constructor: where the detector compares its normalization with the backbone."""


@pytest.fixture(scope="module")
def mobilenet_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "tf_mobilenetv3_small_100.pth"
    torch.save(_random_state_dict("tf_mobilenetv3_small_100"), path)
    return str(path)


@pytest.fixture(scope="module")
def resnet18_state():
    return _random_state_dict("resnet18")


@pytest.fixture(scope="module")
def resnet18_checkpoint(tmp_path_factory, resnet18_state):
    path = tmp_path_factory.mktemp("ckpt") / "resnet18.pth"
    torch.save(resnet18_state, path)
    return str(path)


def test_no_expected_statistics_without_pretrained_weights():
    assert TimmBackbone("resnet18", out_indices=(1,)).expected_pixel_statistics is None


def test_checkpoint_gives_the_statistics_of_timm_pretrained_cfg(mobilenet_checkpoint):
    backbone = TimmBackbone(
        "tf_mobilenetv3_small_100", checkpoint_path=mobilenet_checkpoint, out_indices=(2, 3)
    )
    mean, std = backbone.expected_pixel_statistics
    assert mean == pytest.approx([127.5] * 3) and std == pytest.approx([127.5] * 3)


def _detector_warnings(caplog, backbone, mean, std, input_format="RGB") -> list[str]:
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="detr_ext"):
        _StatisticsDetector(
            backbone=backbone,
            num_classes=2,
            pixel_mean=mean,
            pixel_std=std,
            input_format=input_format,
        )
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_detector_warns_when_pixel_statistics_differ_from_the_weights(caplog, mobilenet_checkpoint):
    backbone = TimmBackbone(
        "tf_mobilenetv3_small_100", checkpoint_path=mobilenet_checkpoint, out_indices=(2, 3)
    )
    (message,) = _detector_warnings(caplog, backbone, *_IMAGENET)
    assert "model.pixel_mean=[123.675, 116.28, 103.53]" in message
    assert "model.pixel_std=[58.395, 57.12, 57.375]" in message
    assert "pixel_mean=[127.5, 127.5, 127.5], pixel_std=[127.5, 127.5, 127.5]" in message
    assert "RGB" in message
    assert _detector_warnings(caplog, backbone, [127.5] * 3, [127.5] * 3) == []


def test_detector_warns_on_bgr_input_for_timm_weights(caplog, resnet18_checkpoint):
    backbone = TimmBackbone("resnet18", checkpoint_path=resnet18_checkpoint, out_indices=(1,))
    assert _detector_warnings(caplog, backbone, *_IMAGENET) == []
    mean_bgr, std_bgr = (values[::-1] for values in _IMAGENET)
    (message,) = _detector_warnings(caplog, backbone, mean_bgr, std_bgr, input_format="BGR")
    assert "expect RGB images but model.input_format is 'BGR'" in message
    assert "differ" not in message  # the statistics match channel by channel


def test_detector_does_not_warn_without_pretrained_weights(caplog):
    backbone = TimmBackbone("tf_mobilenetv3_small_100", out_indices=(2, 3))
    assert _detector_warnings(caplog, backbone, *_IMAGENET, input_format="BGR") == []


# ---------------------------------------------------------------------- checkpoint_path


@pytest.mark.parametrize(
    "wrap",
    [
        lambda s: {"state_dict": {"backbone." + k: v for k, v in s.items()}},  # mmpretrain
        lambda s: {"state_dict": {"model." + k: v for k, v in s.items()}},  # Lightning
        lambda s: {"model": {"module." + k: v for k, v in s.items()}},  # DDP
        lambda s: {"state_dict_ema": s},  # timm's train.py EMA
    ],
    ids=["mmpretrain", "lightning", "ddp", "ema"],
)
def test_checkpoint_with_wrapper_and_prefix_loads(tmp_path, resnet18_state, wrap):
    path = tmp_path / "resnet18.pth"
    torch.save(wrap(resnet18_state), path)
    backbone = TimmBackbone("resnet18", checkpoint_path=str(path), out_indices=(2, 3, 4))
    _assert_loaded(backbone, resnet18_state)


def test_checkpoint_saved_from_a_detr_ext_backbone_loads(tmp_path):
    """convnext's feature wrapper renames ``stages.0`` to ``stages_0``; a detector saves
    ``backbone.timm_model.stages_0...``."""
    source = TimmBackbone("convnext_atto", out_indices=(1, 2, 3))
    with torch.no_grad():
        for value in source.parameters():
            value.normal_()
    saved = {"backbone." + k: v for k, v in source.state_dict().items()}
    path = tmp_path / "detector.pth"
    torch.save({"model": saved, "iteration": 10}, path)
    backbone = TimmBackbone("convnext_atto", checkpoint_path=str(path), out_indices=(1, 2, 3))
    _assert_loaded(backbone, source.state_dict(), to_full=lambda name: "timm_model." + name)


def test_full_model_checkpoint_maps_to_flattened_names_and_logs_skipped_keys(tmp_path, caplog):
    state = _random_state_dict("convnext_atto")
    path = tmp_path / "convnext_atto.pth"
    torch.save(state, path)
    with caplog.at_level(logging.INFO, logger=_CHECKPOINT_LOGGER):
        backbone = TimmBackbone("convnext_atto", checkpoint_path=str(path), out_indices=(1, 2))
    _assert_loaded(backbone, state, to_full=lambda name: re.sub(r"^(stem|stages)_", r"\1.", name))
    # head.fc is the classifier; head.norm and stages.3 are layers the feature model drops.
    dropped = [k for k in state if k.startswith(("head.norm.", "stages.3."))]
    (message,) = [r.getMessage() for r in caplog.records if "checkpoint_path" in r.getMessage()]
    assert "skipped 2 classifier-head keys ['head.fc.weight', 'head.fc.bias']" in message
    assert f"and {len(dropped)} keys of layers the feature model does not use" in message


def _listed(message: str, kind: str) -> tuple[int, list[str]]:
    """The count and the key list after ``"<count> <kind> "`` in an error message."""
    match = re.search(rf"(\d+) {re.escape(kind)} (\[.*?\])", message)
    assert match, message
    return int(match.group(1)), ast.literal_eval(match.group(2))


def test_checkpoint_of_a_deeper_variant_is_rejected(tmp_path):
    """resnet34 has resnet18's widths with more blocks: timm loaded it silently."""
    state = _random_state_dict("resnet34")
    path = tmp_path / "resnet34.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"timm's 'resnet18'.*unexpected keys") as info:
        TimmBackbone("resnet18", checkpoint_path=str(path), out_indices=(1, 2, 3))
    count, shown = _listed(str(info.value), "unexpected keys")
    extra = [k for k in state if re.match(r"layer\d\.([2-9]|1\d)\.", k)]
    assert count == len(extra) and len(shown) == 10 and set(shown) <= set(extra)


def test_checkpoint_missing_or_misshapen_weight_is_rejected(tmp_path, resnet18_state):
    state = dict(resnet18_state)
    del state["layer2.0.conv1.weight"]
    state["layer1.0.conv2.weight"] = torch.zeros(64, 64, 1, 1)
    path = tmp_path / "broken.pth"
    torch.save(state, path)
    with pytest.raises(ValueError) as info:
        TimmBackbone("resnet18", checkpoint_path=str(path), out_indices=(1, 2))
    message = str(info.value)
    assert _listed(message, "missing keys") == (1, ["layer2.0.conv1.weight"])
    count, (shown,) = _listed(message, "shape mismatches (checkpoint vs model)")
    assert count == 1 and shown == "layer1.0.conv2.weight: (64, 64, 1, 1) vs (64, 64, 3, 3)"


def test_checkpoint_with_foreign_prefix_is_rejected(tmp_path, resnet18_state):
    path = tmp_path / "encoder.pth"
    torch.save({"state_dict": {"encoder." + k: v for k, v in resnet18_state.items()}}, path)
    with pytest.raises(ValueError, match=r"missing keys.*unexpected keys \['encoder\.conv1"):
        TimmBackbone("resnet18", checkpoint_path=str(path), out_indices=(1,))


def test_checkpoint_that_is_not_a_state_dict_is_rejected(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"epoch": 3, "net": {"conv1.weight": torch.zeros(1)}}, path)
    with pytest.raises(ValueError, match=r"expected a state dict.*keys \['epoch', 'net'\]"):
        TimmBackbone("resnet18", checkpoint_path=str(path), out_indices=(1,))


def test_checkpoint_first_conv_adapted_to_in_channels(resnet18_checkpoint, resnet18_state):
    backbone = TimmBackbone(
        "resnet18", checkpoint_path=resnet18_checkpoint, in_channels=1, out_indices=(1,)
    )
    expected = adapt_input_conv(1, resnet18_state["conv1.weight"])
    assert torch.equal(backbone.timm_model.conv1.weight, expected)
    assert torch.equal(
        backbone.timm_model.layer1[0].conv1.weight, resnet18_state["layer1.0.conv1.weight"]
    )
