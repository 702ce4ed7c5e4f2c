"""What train_net's checkpointer lets into a model: ``train.init_checkpoint`` must fill some of
the model's tensors (a torchvision ResNet or an unconverted checkpoint used to train from
scratch after a list of missing keys), and ``--resume`` must find the same model (a changed
``num_classes`` used to load, then crash inside the optimizer step)."""

from __future__ import annotations

import pickle

import pytest
import torch
from detectron2.layers import FrozenBatchNorm2d
from detectron2.modeling.backbone.resnet import BottleneckBlock
from torch import nn

from detr_ext.checkpoint import CheckpointMismatchError
from detr_ext.engine import ResumeError, SafeCheckpointer


class Detector(nn.Module):
    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
        self.class_embed = nn.Linear(4, num_classes)


def _save(state: dict, path) -> str:
    torch.save({"model": state}, path)
    return str(path)


def test_init_checkpoint_matching_no_tensor_is_refused(tmp_path):
    torchvision_like = {"conv1.weight": torch.zeros(4, 3, 3, 3), "fc.weight": torch.zeros(2, 4)}
    path = _save(torchvision_like, tmp_path / "resnet.pth")
    checkpointer = SafeCheckpointer(Detector(), str(tmp_path / "run"))
    with pytest.raises(CheckpointMismatchError, match="train.init_checkpoint: checkpoint") as info:
        checkpointer.resume_or_load(path, resume=False)
    assert "has none of the model's parameter names" in str(info.value)
    assert "tools/convert_checkpoint.py" in str(info.value)


def test_init_checkpoint_of_a_part_or_another_head_loads_what_fits(tmp_path):
    source = Detector(num_classes=80)
    backbone_only = {k: v for k, v in source.state_dict().items() if k.startswith("backbone.")}
    for state in (backbone_only, source.state_dict()):  # a backbone; a head of another size
        model = Detector(num_classes=3)
        head = model.class_embed.weight.detach().clone()
        path = _save(state, tmp_path / "weights.pth")
        SafeCheckpointer(model, str(tmp_path / "run")).resume_or_load(path, resume=False)
        torch.testing.assert_close(model.backbone[0].weight, source.backbone[0].weight)
        assert torch.equal(model.class_embed.weight, head)  # skipped, keeps its init


def test_resume_with_another_model_is_refused(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    SafeCheckpointer(Detector(num_classes=3), str(run)).save("model_0000003", iteration=3)
    checkpointer = SafeCheckpointer(Detector(num_classes=4), str(run))
    with pytest.raises(ResumeError, match=r"--resume: .*model_0000003.pth does not fit") as info:
        checkpointer.resume_or_load("", resume=True)
    message = str(info.value)
    assert "class_embed.weight: [3, 4] vs [4, 4]" in message
    assert "train.init_checkpoint=" in message and "model_0000003.pth" in message
    # The same model resumes; a load outside resume_or_load is not checked against a run.
    same = Detector(num_classes=3)
    assert SafeCheckpointer(same, str(run)).resume_or_load("", resume=True)["iteration"] == 3
    SafeCheckpointer(Detector(num_classes=4), str(run)).load(str(run / "model_0000003.pth"))


def test_resume_without_a_checkpoint_loads_the_init_checkpoint_leniently(tmp_path):
    source = Detector(num_classes=80)
    path = _save(source.state_dict(), tmp_path / "coco.pth")
    model = Detector(num_classes=3)
    SafeCheckpointer(model, str(tmp_path / "empty_run")).resume_or_load(path, resume=True)
    torch.testing.assert_close(model.backbone[0].weight, source.backbone[0].weight)


class FrozenNormDetector(nn.Module):
    """As the R50 configs: detectron2 bottlenecks with FrozenBN, whose running statistics
    detectron2 fills in when a file lacks them, and the normalization of the input."""

    def __init__(self, *, stride_in_1x1: bool = False, input_format: str = "RGB") -> None:
        super().__init__()
        block = BottleneckBlock(
            4, 8, bottleneck_channels=2, stride=2, stride_in_1x1=stride_in_1x1, norm="FrozenBN"
        )
        self.backbone = nn.Module()
        self.backbone.res2 = nn.Sequential(block)
        self.query_embed = nn.Embedding(3, 8)
        self.input_format = input_format
        std = [1.0, 1.0, 1.0] if input_format == "BGR" else [58.395, 57.12, 57.375]
        self.register_buffer("pixel_std", torch.tensor(std).view(3, 1, 1), False)


def test_init_checkpoint_filling_only_frozen_norm_statistics_is_refused(tmp_path):
    """FrozenBN's filled-in statistics used to count as loaded: a torchvision ResNet trained
    the R50 configs from scratch without an error."""
    torchvision_like = {"layer1.0.conv1.weight": torch.zeros(2, 4, 1, 1)}
    path = _save(torchvision_like, tmp_path / "resnet.pth")
    checkpointer = SafeCheckpointer(FrozenNormDetector(), str(tmp_path / "run"))
    with pytest.raises(CheckpointMismatchError, match="has none of the model's parameter names"):
        checkpointer.resume_or_load(path, resume=False)


def test_init_checkpoint_filling_no_backbone_weight_is_refused(tmp_path):
    """An unconverted facebookresearch/detr file: query_embed matches by name, the backbone's
    tensors under other names fit nowhere."""
    model = FrozenNormDetector()
    other_codebase = {
        "query_embed.weight": torch.ones(3, 8),
        "backbone.0.body.layer1.0.conv1.weight": torch.zeros(2, 4, 1, 1),
    }
    path = _save(other_codebase, tmp_path / "detr.pth")
    with pytest.raises(CheckpointMismatchError, match="none of its backbone's") as info:
        SafeCheckpointer(model, str(tmp_path / "run")).resume_or_load(path, resume=False)
    assert "backbone.0.body.layer1.0.conv1.weight" in str(info.value)
    assert "tools/convert_checkpoint.py" in str(info.value)
    # The same tensors without the ones that fit nowhere: a deliberate head-only start.
    path = _save({"query_embed.weight": torch.ones(3, 8)}, tmp_path / "head.pth")
    SafeCheckpointer(model, str(tmp_path / "run")).resume_or_load(path, resume=False)
    assert torch.equal(model.query_embed.weight, torch.ones(3, 8))


def _caffe2_blobs(block: nn.Module) -> dict:
    """``block``'s weights under MSRA / Caffe2 blob names (``res2_0_branch2a_w``, ...), as
    ``ImageNetPretrained/MSRA/R-50.pkl`` holds them (BatchNorm folded into scale and bias)."""
    branches = {
        "conv1": "branch2a",
        "conv2": "branch2b",
        "conv3": "branch2c",
        "shortcut": "branch1",
    }
    blobs = {}
    for conv, branch in branches.items():
        module = getattr(block, conv)
        blobs[f"res2_0_{branch}_w"] = module.weight.detach().numpy()
        blobs[f"res2_0_{branch}_bn_s"] = module.norm.weight.numpy()
        blobs[f"res2_0_{branch}_bn_b"] = module.norm.bias.numpy()
    return blobs


def test_msra_weights_need_a_model_set_up_for_them(tmp_path):
    torch.manual_seed(0)
    source = FrozenNormDetector(stride_in_1x1=True, input_format="BGR").backbone.res2[0]
    for module in source.modules():
        if isinstance(module, FrozenBatchNorm2d):
            module.weight.uniform_(0.5, 2.0)
    path = tmp_path / "R-50.pkl"
    path.write_bytes(pickle.dumps(_caffe2_blobs(source)))
    checkpointer = SafeCheckpointer(FrozenNormDetector(), str(tmp_path / "run"))
    with pytest.raises(CheckpointMismatchError, match="holds MSRA / Caffe2 weights") as info:
        checkpointer.resume_or_load(str(path), resume=False)
    message = str(info.value)
    assert "model.input_format='RGB'" in message and "model.pixel_std=[58.395" in message
    assert "stride_in_1x1=False" in message
    for stride_in_1x1, input_format in ((True, "RGB"), (False, "BGR")):  # one setting off
        model = FrozenNormDetector(stride_in_1x1=stride_in_1x1, input_format=input_format)
        with pytest.raises(CheckpointMismatchError, match="holds MSRA / Caffe2 weights"):
            SafeCheckpointer(model, str(tmp_path / "run")).resume_or_load(str(path), resume=False)
    model = FrozenNormDetector(stride_in_1x1=True, input_format="BGR")
    SafeCheckpointer(model, str(tmp_path / "run")).resume_or_load(str(path), resume=False)
    torch.testing.assert_close(model.backbone.res2[0].conv2.weight, source.conv2.weight)
    torch.testing.assert_close(model.backbone.res2[0].conv1.norm.weight, source.conv1.norm.weight)
