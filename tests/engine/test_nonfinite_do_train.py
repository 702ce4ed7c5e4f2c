"""Training through ``do_train`` never leaves a non-finite checkpoint behind and ``--resume``
recovers from the last good one; a real detector that diverged stops with the divergence
message. The Trainer's own handling of non-finite steps is tested in ``test_nonfinite.py``."""

import argparse
import itertools
import logging
import os

import pytest
import torch
from detectron2.config import LazyCall as L
from fvcore.common.param_scheduler import LinearParamScheduler
from omegaconf import DictConfig

from detr_ext.config import get_config
from detr_ext.engine import NonFiniteTrainingError, Trainer, do_train
from tests.engine.nonfinite_models import DivergingTinyModel
from tests.engine.tiny_project import IN_FEATURES
from tests.projects.tiny_shapes import SHAPES_CONFIGS, synthetic_batch, tiny_shapes_config


def tiny_batches(batch_size: int = 4):
    generator = torch.Generator().manual_seed(0)
    weight = torch.tensor([0.5, -1.0, 2.0, 0.25])
    while True:
        inputs = torch.randn(batch_size, IN_FEATURES, generator=generator)
        yield [{"x": x, "y": y} for x, y in zip(inputs, inputs @ weight, strict=True)]


def tiny_config(output_dir, diverge_at: int, max_iter: int) -> DictConfig:
    train = get_config("common/train.py").train
    train.update(
        output_dir=str(output_dir),
        device="cpu",
        max_iter=max_iter,
        checkpointer=dict(period=2, max_to_keep=10),
        eval_period=0,
        log_period=1,
        max_consecutive_nonfinite=3,
    )
    optimizer = get_config("common/optim.py").SGD
    optimizer.lr = 0.05
    return DictConfig(
        dict(
            model=L(DivergingTinyModel)(diverge_at=diverge_at),
            dataloader=dict(train=L(tiny_batches)()),
            optimizer=optimizer,
            # Constant 1 (fvcore's ConstantParamScheduler rejects where=1.0 at the last step).
            lr_multiplier=L(LinearParamScheduler)(start_value=1.0, end_value=1.0),
            train=train,
        ),
        flags={"allow_objects": True},
    )


def checkpoint_weights(path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=False)["model"]


def test_do_train_divergence_leaves_only_finite_checkpoints_and_resumes(tmp_path):
    output_dir = tmp_path / "output"
    # Iterations 0-2 train; from iteration 3 every backward overflows.
    cfg = tiny_config(output_dir, diverge_at=3, max_iter=12)
    with pytest.raises(NonFiniteTrainingError) as error:
        do_train(argparse.Namespace(resume=False), cfg)
    message = str(error.value)
    last_good = output_dir / "model_0000003.pth"
    assert "at iteration 5;" in message and "probable divergence" in message
    assert "Learning rate in use: 0.05." in message
    assert f"Last good checkpoint: {last_good} (its weights are finite; the" in message

    saved = sorted(name for name in os.listdir(output_dir) if name.endswith(".pth"))
    assert saved == ["model_0000001.pth", "model_0000003.pth"]
    for name in saved:
        weights = checkpoint_weights(output_dir / name)
        assert all(torch.isfinite(tensor).all() for tensor in weights.values()), name
    assert (output_dir / "last_checkpoint").read_text() == "model_0000003.pth"

    # The run is fixed (here: no more overflow) and resumed from the last good checkpoint.
    cfg = tiny_config(output_dir, diverge_at=10**6, max_iter=6)
    do_train(argparse.Namespace(resume=True), cfg)
    assert (output_dir / "last_checkpoint").read_text() == "model_final.pth"
    final = torch.load(output_dir / "model_final.pth", map_location="cpu", weights_only=False)
    assert final["iteration"] == 5
    assert final["trainer"]["nonfinite_skipped_steps"] == 1  # iteration 3, before the save
    assert all(torch.isfinite(tensor).all() for tensor in final["model"].values())
    resumed = checkpoint_weights(last_good)
    assert not torch.equal(final["model"]["linear.weight"], resumed["linear.weight"])


@pytest.mark.parametrize("project", sorted(SHAPES_CONFIGS))
def test_a_diverged_detector_stops_with_divergence_not_a_matcher_error(project):
    """A real detector whose class head overflowed (what a far too large learning rate does):
    its logits are NaN / inf. The matcher used to stop training with "the matching cost
    contains NaN", blaming the predictions' format; now the losses come out non-finite, the
    step is skipped and training stops with the divergence message (iteration, learning rate)."""
    from detectron2.config import instantiate

    torch.manual_seed(0)
    cfg = tiny_shapes_config(project)
    model = instantiate(cfg.model).train()
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    head = next(p for name, p in model.named_parameters() if "class_embed" in name)
    with torch.no_grad():
        head.view(-1)[0] = float("inf")
    trainer = Trainer(
        model,
        itertools.repeat(synthetic_batch([2, 1], seed=0)),
        optimizer,
        max_consecutive_nonfinite=1,
    )
    with pytest.raises(NonFiniteTrainingError) as error:
        trainer.train(0, 1)
    message = str(error.value)
    assert "iteration 0" in message and "probable divergence" in message
    assert f"{cfg.optimizer.lr:.6g}" in message


def test_resume_without_a_checkpoint_says_it_starts_a_new_run(tmp_path, caplog):
    """fvcore's "No checkpoint found" was the only sign that a mistyped train.output_dir made
    --resume a new run."""
    cfg = tiny_config(tmp_path / "typo", diverge_at=10**6, max_iter=1)
    with caplog.at_level(logging.WARNING, logger="detr_ext.engine.defaults"):
        do_train(argparse.Namespace(resume=True), cfg)
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("--resume:")]
    assert said == [
        f"--resume: {tmp_path / 'typo'} holds no checkpoint to continue (no last_checkpoint "
        "file); this is a new run from train.init_checkpoint=''."
    ]
