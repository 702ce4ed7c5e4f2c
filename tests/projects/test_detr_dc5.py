"""DETR-R50-DC5: the configs build the dilated ResNet-50 in which facebookresearch/detr trained
its published DC5 weights (torchvision's ``replace_stride_with_dilation=[False, False, True]``),
and those weights, converted with ``detr.facebookresearch``, reproduce torchvision's res5."""

from pathlib import Path

import pytest
import torch
import torchvision
from detectron2.config import LazyConfig, instantiate

import projects.detr.checkpoint  # noqa: F401  (registers the converters)
from detr_ext.checkpoint import get_converter

from .key_lists import read_key_list, synthetic_state_dict

CONFIG_DIR = Path(__file__).resolve().parents[2] / "projects" / "detr" / "configs"
DC5_CONFIGS = ("detr_r50_dc5_300ep.py", "detr_r50_dc5_500ep.py")


def torchvision_dc5_resnet50() -> torch.nn.Module:
    """torchvision's dilated ResNet-50 with frozen BatchNorm of non-trivial statistics."""
    torch.manual_seed(0)
    model = torchvision.models.resnet50(
        replace_stride_with_dilation=[False, False, True],
        norm_layer=torchvision.ops.FrozenBatchNorm2d,
    )
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torchvision.ops.FrozenBatchNorm2d):
                size = module.weight.shape
                module.weight.copy_(torch.rand(size, generator=generator) + 0.5)
                module.bias.copy_(0.1 * torch.randn(size, generator=generator))
                module.running_mean.copy_(0.1 * torch.randn(size, generator=generator))
                module.running_var.copy_(torch.rand(size, generator=generator) + 0.5)
    return model.eval()


@pytest.mark.parametrize("config_name", DC5_CONFIGS)
def test_dc5_configs_build_the_torchvision_dilation(config_name):
    backbone_cfg = LazyConfig.load(str(CONFIG_DIR / config_name)).model.backbone
    assert backbone_cfg.res5_dilation == 2
    assert backbone_cfg.res5_dilation_style == "torchvision"


@torch.no_grad()
def test_converted_facebookresearch_dc5_backbone_reproduces_torchvision():
    model = instantiate(LazyConfig.load(str(CONFIG_DIR / "detr_r50_dc5_300ep.py")).model).eval()
    reference = torchvision_dc5_resnet50()

    # A facebookresearch DETR-DC5 checkpoint: the R50 key list (DC5 has the same tensors) with
    # the backbone taken from the torchvision model.
    source = synthetic_state_dict(read_key_list("facebookresearch_detr_resnet50.txt"))
    for name, value in reference.state_dict().items():
        key = f"backbone.0.body.{name}"
        if not name.startswith("fc."):
            assert key in source, key
            source[key] = value.clone()
    converted, report = get_converter("detr.facebookresearch").convert(source, model.state_dict())
    assert report.ok, report.summary()
    model.load_state_dict(converted, strict=True)

    backbone = model.backbone.double()
    reference = reference.double()
    images = torch.randn(
        1, 3, 64, 80, dtype=torch.float64, generator=torch.Generator().manual_seed(2)
    )
    stem = torch.nn.Sequential(reference.conv1, reference.bn1, reference.relu, reference.maxpool)
    features = stem(images)
    for layer in (reference.layer1, reference.layer2, reference.layer3, reference.layer4):
        features = layer(features)
    assert features.shape == (1, 2048, 4, 5)  # stride 16
    torch.testing.assert_close(backbone(images)["res5"], features, rtol=1e-10, atol=1e-10)
