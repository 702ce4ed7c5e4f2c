"""What ``tools/pretrain_backbone.py`` refuses before it trains (bad options, a frozen backbone,
an unregistered probe dataset), ``seed=-1``, and the divergence error."""

from __future__ import annotations

import itertools

import pytest
import torch
from detectron2.config import LazyConfig, instantiate
from detectron2.data import DatasetCatalog

from detr_ext.config import get_config
from detr_ext.engine import NonFiniteTrainingError, OutputDirInUseError, SafeCheckpointer
from detr_ext.modeling.backbones import build_resnet_backbone
from detr_ext.pretrain.checks import check_trainable_backbone, probe_dataset_name
from detr_ext.pretrain.options import PretrainOptions
from detr_ext.pretrain.trainer import (
    DINOPretrainer,
    build_pretrain_hooks,
    build_pretrain_model,
    param_groups,
)

from .runs import DINO_CONFIG, pretrain

pytestmark = pytest.mark.usefixtures("isolated_run")


@pytest.mark.parametrize(
    "override, message",
    [
        ("checkpoint_period=0", "checkpoint_period: expected a positive integer, got 0"),
        ("log_period=0", "log_period: expected a positive integer, got 0"),
        ("warmup_fraction=2", "warmup_fraction: expected a number in [0, 1], got 2.0"),
        ("teacher_momentum_end=2", "teacher_momentum_end: expected a number in [0, 1], got 2.0"),
        ("lr=-1", "lr: expected a finite number > 0, got -1.0"),
        ("lr=nan", "lr: expected a finite number > 0, got nan"),
        ("weight_decay=-1", "weight_decay: expected a finite number >= 0, got -1.0"),
        ("clip_grad=-1", "clip_grad: expected a finite number >= 0 (0: no clipping), got -1.0"),
        ("knn_k=0", "knn_k: expected a positive integer, got 0"),
        ("head_bn=2", "head_bn: expected 0 or 1, got 2"),
    ],
)
def test_bad_options_are_refused_before_anything_is_built(tool, tmp_path, override, message):
    # The config file does not exist: the options are checked before it is read.
    argv = ["--config-file", str(tmp_path / "absent.py"), "--output-dir", str(tmp_path / "out")]
    with pytest.raises(ValueError) as error:
        tool.main(tool.build_parser().parse_args([*argv, override]))
    assert message in str(error.value)
    assert not (tmp_path / "out").exists()


def test_validate_names_every_bad_option():
    with pytest.raises(ValueError) as error:
        PretrainOptions(max_iter=0, center_momentum=-0.5, num_workers=-1).validate()
    text = str(error.value)
    assert "max_iter: expected a positive integer, got 0" in text
    assert "center_momentum: expected a number in [0, 1], got -0.5" in text
    assert "num_workers: expected an integer >= 0, got -1" in text
    assert PretrainOptions().validate() == PretrainOptions()


def test_negative_seed_draws_a_recorded_seed(tool, images, tmp_path):
    output = tmp_path / "out"
    pretrain(tool, images, output, "--max-iter", "1", options=["seed=-1"])
    seed = torch.load(output / "model_final.pth", weights_only=False)["pretrain_run"]["options"]
    assert seed["seed"] >= 0
    assert f"seed=-1: drew seed {seed['seed']} (seed={seed['seed']} repeats the run)" in (
        (output / "log.txt").read_text()
    )


def test_a_new_pretraining_over_an_earlier_one_is_refused_unless_overwrite(tool, images, tmp_path):
    """It replaced the earlier pretraining's checkpoints and appended to its metrics.json, as
    train_net did; now the same rule as train_net's (refused; --overwrite sets it aside)."""
    output = tmp_path / "out"
    pretrain(tool, images, output, "--max-iter", "1")
    first = (output / "backbone.pth").read_bytes()
    with pytest.raises(OutputDirInUseError, match="holds the checkpoints of an earlier run"):
        pretrain(tool, images, output, "--max-iter", "1")
    assert (output / "backbone.pth").read_bytes() == first  # refused before writing
    pretrain(tool, images, output, "--max-iter", "1", "--overwrite")
    (aside,) = output.glob("replaced_*")
    assert (aside / "backbone.pth").read_bytes() == first
    assert {"last_checkpoint", "model_final.pth", "metrics.json"} <= {
        p.name for p in aside.iterdir()
    }
    assert "--overwrite: the earlier pretraining in" in (output / "log.txt").read_text()


FROZEN_CONFIG = """
from detectron2.config import LazyConfig

_base = LazyConfig.load({base!r})
model, dataloader, optimizer, train = _base.model, _base.dataloader, _base.optimizer, _base.train
lr_multiplier = _base.lr_multiplier
model.backbone.norm = "FrozenBN"
model.backbone.freeze_at = 1
"""


def test_frozen_backbone_is_refused_with_the_overrides_that_unfreeze_it(tool, images, tmp_path):
    config = tmp_path / "frozen_dino.py"
    config.write_text(FROZEN_CONFIG.format(base=str(DINO_CONFIG)))
    with pytest.raises(ValueError) as error:
        pretrain(tool, images, tmp_path / "out", "--max-iter", "1", config=config)
    text = str(error.value)
    assert "model.backbone: expected a fully trainable backbone" in text
    assert "FrozenBatchNorm2d layers (stem.conv1.norm" in text
    assert "frozen parameters (requires_grad=False: stem.conv1.weight" in text
    assert "model.backbone.norm=BN model.backbone.freeze_at=0" in text
    assert not (tmp_path / "out" / "model_final.pth").exists()
    # The overrides it names make the backbone trainable (and the run go through).
    overrides = ["model.backbone.norm=BN", "model.backbone.freeze_at=0"]
    result = pretrain(
        tool, images, tmp_path / "ok", "--max-iter", "1", options=overrides, config=config
    )
    assert result["report"].complete


def test_detr_r50_backbone_names_its_stem_and_stage_norms():
    cfg = get_config("common/models/detr_r50.py")
    node = cfg.model.backbone
    with pytest.raises(ValueError) as error:
        check_trainable_backbone(instantiate(node), node)
    expected = (
        "model.backbone.stem.norm=BN model.backbone.stages.norm=BN model.backbone.freeze_at=0"
    )
    assert expected in str(error.value)
    cfg = LazyConfig.apply_overrides(cfg, expected.split())
    check_trainable_backbone(instantiate(cfg.model.backbone), cfg.model.backbone)


def test_probe_dataset_unregistered(tool, images, tmp_path, monkeypatch):
    with pytest.raises(ValueError, match=r"--probe-dataset: .* got 'no_such_set'.*''"):
        probe_dataset_name("no_such_set")
    assert probe_dataset_name("") is None
    # Not given: shapes_val when registered, else no probe (not an error).
    monkeypatch.setattr(DatasetCatalog, "list", lambda: ["coco_2017_train"])
    assert probe_dataset_name(None) is None
    monkeypatch.setattr(DatasetCatalog, "list", lambda: ["shapes_val"])
    assert probe_dataset_name(None) == "shapes_val"
    monkeypatch.undo()
    # Through the tool (its last --probe-dataset wins), before any training.
    with pytest.raises(ValueError, match="--probe-dataset"):
        pretrain(tool, images, tmp_path / "out", "--probe-dataset", "no_such_set")
    assert not (tmp_path / "out" / "model_final.pth").exists()


def test_divergence_names_the_lr_the_last_checkpoint_and_resume(tmp_path):
    """Iteration 2's crops are NaN: the error names the iteration, the learning rate in use,
    the checkpoint of iteration 1 and how to resume."""
    options = PretrainOptions(
        max_iter=4, batch_size=2, lr=1e-3, warmup_fraction=0.0, out_dim=16, hidden_dim=16,
        bottleneck_dim=8, checkpoint_period=2, log_period=1,
    )  # fmt: skip
    torch.manual_seed(0)
    backbone = build_resnet_backbone(
        depth=18, out_features=("res5",), norm="BN", freeze_at=0, base_channels=8
    )
    model, loss = build_pretrain_model(backbone, options)
    model.train()
    good = [torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32)]
    bad = [torch.full((2, 3, 32, 32), float("nan"))] * 2
    optimizer = torch.optim.AdamW(param_groups(model.student), lr=0.0)
    trainer = DINOPretrainer(model, loss, itertools.chain([good, good], [bad]), optimizer, options)
    checkpointer = SafeCheckpointer(
        model, str(tmp_path), optimizer=optimizer, checked_keys=("model",)
    )
    trainer.register_hooks(build_pretrain_hooks(trainer, checkpointer, str(tmp_path), None))
    with pytest.raises(NonFiniteTrainingError) as error:
        trainer.train(0, options.max_iter)
    text = str(error.value)
    assert "DINO loss is nan at iteration 2: probable divergence" in text
    assert "Learning rate in use: 0.0005005 " in text  # the cosine at 2 of 4
    assert f"Last good checkpoint: {tmp_path / 'model_0000001.pth'}" in text
    assert "--resume and the same --output-dir" in text and "lr=" in text
