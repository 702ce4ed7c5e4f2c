"""tools/pretrain_backbone.py end to end on a few shapes images (a few iterations, tiny crops,
batch 2), ``--resume``, the detector-loadable backbone checkpoint, the k-NN probe against a
hand computation, and the folder dataset's errors."""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import LazyConfig, instantiate
from detectron2.utils.events import EventStorage
from PIL import Image

from detr_ext.data.image_io import ImageReadError
from detr_ext.modeling.backbones import build_resnet_backbone
from detr_ext.pretrain.data import (
    PretrainImageDataset,
    collate_crops,
    folder_image_files,
)
from detr_ext.pretrain.export import backbone_load_report
from detr_ext.pretrain.knn import knn_accuracy, probe_split
from detr_ext.pretrain.options import PretrainOptions
from detr_ext.pretrain.trainer import DINOPretrainer, build_pretrain_model, param_groups

from ..tool_runs import run_tool, tiny_shapes_config

# Tiny crops and head: the run is about the machinery, not the features.
TINY_OPTIONS = [
    "global_size=64", "local_size=32", "num_local=2", "out_dim=64", "hidden_dim=32",
    "bottleneck_dim=16", "probe_crop_size=32", "freeze_last_layer_iters=1", "log_period=1",
    "checkpoint_period=2",
]  # fmt: skip


def _pretrain(tmp_path, config, output, *extra):
    args = ["--config-file", str(config), "--output-dir", str(output), "--batch-size", "2"]
    result = run_tool(
        "pretrain_backbone.py",
        [*args, *extra, *TINY_OPTIONS],
        cwd=tmp_path,
        datasets=tmp_path / "datasets",
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def _assert_backbone_loads(config, backbone_file, expected_state):
    """Every ``backbone.*`` key of the config's detector is filled, with the teacher's values."""
    detector = instantiate(LazyConfig.load(str(config)).model)
    report = backbone_load_report(detector, backbone_file)
    assert report.complete, report.summary()
    assert report.loaded and not report.unexpected, report.summary()
    DetectionCheckpointer(detector).load(str(backbone_file))
    loaded = detector.state_dict()
    for key in report.loaded:
        torch.testing.assert_close(loaded[key], expected_state[key], rtol=0, atol=0)


def test_pretrain_resume_and_load_into_dino_and_detr(tmp_path):
    tiny_dino = tiny_shapes_config("dino", tmp_path)
    output = tmp_path / "pretrain_dino"
    first = _pretrain(tmp_path, tiny_dino, output, "--max-iter", "2", "--probe-period", "2")
    assert "eta" in (first.stdout + first.stderr).lower()
    probe = json.loads((output / "probe.json").read_text())
    assert [entry["iteration"] for entry in probe] == [0, 2]
    assert all(0.0 <= entry["accuracy"] <= 1.0 for entry in probe)

    # --resume continues after iteration 1 (the last saved) with the saved optimizer state.
    second = _pretrain(
        tmp_path, tiny_dino, output, "--max-iter", "4", "--probe-period", "2", "--resume"
    )
    assert "Starting training from iteration 2" in second.stdout + second.stderr
    # ... and the image stream after the 2 x 2 images the first run read, not from its start.
    assert "Continuing the training data stream of the checkpoint: index 4 " in second.stdout
    state = torch.load(output / "model_final.pth", map_location="cpu", weights_only=False)
    assert state["iteration"] == 3
    assert state["data_stream"]["position"] == 8  # 4 iterations of 2 images
    assert {"model", "optimizer", "dino_loss"} <= state.keys()
    assert state["dino_loss"]["center"].abs().sum() > 0  # the loss center is saved
    steps = {float(s["step"]) for s in state["optimizer"]["state"].values()}
    assert steps <= {3.0, 4.0} and 4.0 in steps  # 4 optimizer steps in all, not 2
    probe = json.loads((output / "probe.json").read_text())
    assert [entry["iteration"] for entry in probe] == [0, 2, 4]

    teacher = {
        "backbone." + key[len("teacher.backbone.") :]: value
        for key, value in state["model"].items()
        if key.startswith("teacher.backbone.")
    }
    student_key = next(k for k in state["model"] if k.startswith("student.backbone."))
    assert (
        not torch.equal(  # the checkpoint holds the teacher, which differs from the student
            state["model"][student_key],
            state["model"]["teacher" + student_key[len("student") :]],
        )
        or student_key.endswith("num_batches_tracked")
    )
    _assert_backbone_loads(tiny_dino, output / "backbone.pth", teacher)

    tiny_detr = tiny_shapes_config("detr", tmp_path)
    output = tmp_path / "pretrain_detr"
    _pretrain(tmp_path, tiny_detr, output, "--max-iter", "1", "--probe-dataset", "")
    assert not (output / "probe.json").exists()
    state = torch.load(output / "model_final.pth", map_location="cpu", weights_only=False)
    teacher = {
        "backbone." + key[len("teacher.backbone.") :]: value
        for key, value in state["model"].items()
        if key.startswith("teacher.backbone.")
    }
    _assert_backbone_loads(tiny_detr, output / "backbone.pth", teacher)


def test_knn_accuracy_matches_a_hand_computed_vote():
    """2-D features, k=2, T=0.5. Test point (1, 0.2): cosines 0.981 (a, label 0), 0.196 (b),
    0.902 (c, label 1); neighbours a and c, weights e^1.96 > e^1.80: label 0, right. Test point
    (0.5, 1): cosines 0.447 (a), 0.894 (b), 0.894 (c); neighbours b and c, both label 1, but
    its label is 0: wrong. Accuracy 1/2."""
    train = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.8, 0.6]])
    train_labels = torch.tensor([0, 1, 1])
    test = torch.tensor([[1.0, 0.2], [0.5, 1.0]])
    test_labels = torch.tensor([0, 0])
    cos = torch.nn.functional.normalize(test, dim=1) @ torch.nn.functional.normalize(train, dim=1).T
    assert cos[0].argsort(descending=True)[:2].tolist() == [0, 2]
    assert math.isclose(
        knn_accuracy(train, train_labels, test, test_labels, k=2, temperature=0.5), 0.5
    )
    # Weighted, not majority: 3 neighbours (label 1 twice, label 0 once, far closer) -> 0.
    train = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-0.1, 1.0]])
    labels = torch.tensor([0, 1, 1])
    test = torch.tensor([[1.0, 0.5]])
    # cos: 0.894 (label 0), 0.447 and 0.358 (label 1); T=0.07: e^12.8 >> e^6.4 + e^5.1.
    assert knn_accuracy(train, labels, test, torch.tensor([0]), k=3, temperature=0.07) == 1.0
    # With a large temperature the weights are nearly equal and the majority wins, however
    # long the test vector (similarities are cosines, in [-1, 1]).
    assert knn_accuracy(train, labels, 1000 * test, torch.tensor([0]), k=3, temperature=100.0) == 0
    # Cosine, not dot product: the long vector (10, 10) is the farther neighbour of (1, 0).
    far_but_long = torch.tensor([[10.0, 10.0], [1.0, 0.1]])
    assert knn_accuracy(far_but_long, torch.tensor([1, 0]), torch.tensor([[1.0, 0.0]]),
                        torch.tensor([0]), k=1) == 1.0  # fmt: skip
    assert knn_accuracy(torch.tensor([[1.0, 0.0]]), torch.tensor([0]), far_but_long,
                        torch.tensor([0, 0]), k=1) == 1.0  # fmt: skip
    with pytest.raises(ValueError, match="one label per feature row"):
        knn_accuracy(train, labels[:2], test, torch.tensor([0]))


def test_probe_split_alternates_within_each_label():
    labels = torch.tensor([2, 0, 2, 0, 2, 1, 1])
    train, test = probe_split(labels)
    assert train.tolist() == [0, 1, 4, 5]
    assert test.tolist() == [2, 3, 6]


def test_folder_dataset_errors_and_crops(tmp_path):
    with pytest.raises(FileNotFoundError, match="expected a directory"):
        folder_image_files(tmp_path / "absent")
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "notes.txt").write_text("no images")
    with pytest.raises(ValueError, match="no image file"):
        folder_image_files(tmp_path / "empty")

    nested = tmp_path / "images" / "a" / "b"
    nested.mkdir(parents=True)
    Image.new("RGB", (40, 30), (255, 0, 0)).save(nested / "red.PNG")
    Image.new("RGB", (20, 20), (0, 0, 255)).save(tmp_path / "images" / "blue.jpg")
    (tmp_path / "images" / "broken.jpg").write_bytes(b"not a jpeg")
    files = folder_image_files(tmp_path / "images")
    assert [f.split("/")[-1] for f in files] == ["red.PNG", "blue.jpg", "broken.jpg"]

    def two_views(image):  # [H, W, 3] uint8 -> 2 views of different sizes
        tensor = torch.from_numpy(image.copy()).permute(2, 0, 1).float()
        return [tensor[:, :8, :8], tensor[:, :4, :4]]

    dataset = PretrainImageDataset(files, two_views)
    assert dataset[0][0][:, 0, 0].tolist() == [255.0, 0.0, 0.0]  # RGB order
    assert PretrainImageDataset(files, two_views, "BGR")[0][0][:, 0, 0].tolist() == [0, 0, 255]
    with pytest.raises(ImageReadError, match="broken.jpg"):
        dataset[2]
    batch = collate_crops([dataset[0], dataset[1]])
    assert [tuple(view.shape) for view in batch] == [(2, 3, 8, 8), (2, 3, 4, 4)]
    assert batch[0][1, :, 0, 0].tolist()[2] > 200  # the second image is the blue one
    with pytest.raises(ValueError, match="same number of crops"):
        collate_crops([dataset[0], dataset[0][:1]])


def test_trainer_step_follows_schedules_freezes_last_layer_and_updates_teacher_by_ema():
    """4 steps, no warm-up: lr, weight decay and momentum are the hand-written cosines; the
    head's last layer is untouched for 2 steps, then trained; the teacher gets no gradient and
    moves as ``m * teacher + (1 - m) * student`` after each step."""
    torch.manual_seed(0)
    options = PretrainOptions(
        max_iter=4, batch_size=2, lr=1e-2, min_lr=1e-4, warmup_fraction=0.0,
        weight_decay=0.04, weight_decay_end=0.4, teacher_momentum=0.9, clip_grad=1.0,
        freeze_last_layer_iters=2, out_dim=16, hidden_dim=16, bottleneck_dim=8,
    )  # fmt: skip
    backbone = build_resnet_backbone(
        depth=18, out_features=("res5",), norm="BN", freeze_at=0, base_channels=8
    )
    model, loss = build_pretrain_model(backbone, options)
    model.train()
    crops = [torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32)]
    crops += [torch.randn(2, 3, 16, 16), torch.randn(2, 3, 16, 16)]
    optimizer = torch.optim.AdamW(param_groups(model.student), lr=0.0)
    trainer = DINOPretrainer(model, loss, itertools.repeat(crops), optimizer, options)
    last_layer = [
        p for n, p in model.student.named_parameters() if "last_layer" in n and p.requires_grad
    ]
    assert last_layer

    def cosine(base, final, it):
        return final + (base - final) * (1 + math.cos(math.pi * it / 4)) / 2

    with EventStorage(0) as trainer.storage:
        for iteration in range(4):
            trainer.iter = iteration
            last_before = [p.detach().clone() for p in last_layer]
            teacher_before = {n: p.detach().clone() for n, p in model.teacher.named_parameters()}
            trainer.run_step()
            regularized, not_regularized = optimizer.param_groups
            assert math.isclose(regularized["lr"], cosine(1e-2, 1e-4, iteration))
            assert math.isclose(regularized["weight_decay"], cosine(0.04, 0.4, iteration))
            assert not_regularized["weight_decay"] == 0.0
            changed = any(not torch.equal(a, p) for a, p in zip(last_before, last_layer))
            assert changed == (iteration >= 2), iteration
            momentum = cosine(0.9, 1.0, iteration)
            student = dict(model.student.named_parameters())
            for name, teacher_param in model.teacher.named_parameters():
                assert teacher_param.grad is None, name
                expected = momentum * teacher_before[name] + (1 - momentum) * student[name]
                torch.testing.assert_close(teacher_param.detach(), expected.detach())
