"""What train_net's checkpointer lets into a model: ``train.init_checkpoint`` must fill some of
the model's tensors (a torchvision ResNet or an unconverted checkpoint used to train from
scratch after a list of missing keys), and ``--resume`` must find the same model (a changed
``num_classes`` used to load, then crash inside the optimizer step)."""

from __future__ import annotations

import pytest
import torch
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
