"""Non-finite losses and gradients never reach the weights: the Trainer skips such steps (on
every DDP rank alike), stops with an informative error after several in a row, and keeps its
count of skipped steps in checkpoints. Training through ``do_train`` is tested in
``test_nonfinite_do_train.py``."""

import itertools
import logging
import os
import re

import pytest
import torch
from detectron2.engine import HookBase, hooks
from torch import nn

from detr_ext.engine import NonFiniteTrainingError, SafeCheckpointer, Trainer
from tests.engine.nonfinite_models import FlakyRegressor


def synthetic_loader():
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(8, 3, generator=generator)
    targets = inputs @ torch.tensor([1.0, -2.0, 0.5]) + 3.0
    return itertools.repeat((inputs, targets))


class WeightRecorder(HookBase):
    """The model's parameters before and after each step."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.before: list[torch.Tensor] = []
        self.after: list[torch.Tensor] = []

    def _flat(self) -> torch.Tensor:
        return torch.cat([p.detach().flatten() for p in self.model.parameters()]).clone()

    def before_step(self) -> None:
        self.before.append(self._flat())

    def after_step(self) -> None:
        self.after.append(self._flat())


def make(model: nn.Module, lr: float = 0.1, **kwargs) -> tuple[Trainer, WeightRecorder]:
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    trainer = Trainer(model, synthetic_loader(), optimizer, **kwargs)
    recorder = WeightRecorder(model)
    trainer.register_hooks([recorder])
    return trainer, recorder


def changed_steps(recorder: WeightRecorder) -> list[bool]:
    """Whether each completed step changed the weights (a step that raised has no entry)."""
    return [
        not torch.equal(before, after)
        for before, after in zip(recorder.before, recorder.after, strict=False)
    ]


@pytest.mark.parametrize(
    "flaw, clip, expected",
    [
        ("inf_grad_at", None, "Non-finite gradient"),
        ("inf_grad_at", {"max_norm": 0.1}, "Non-finite gradient"),
        ("nan_loss_at", None, "Non-finite loss (loss_reg=nan)"),
    ],
    ids=["inf-gradient", "inf-gradient-clipped", "nan-loss"],
)
def test_a_nonfinite_step_is_skipped_with_a_warning(caplog, flaw, clip, expected):
    trainer, recorder = make(FlakyRegressor(**{flaw: [1]}), clip_grad_params=clip)
    with caplog.at_level(logging.WARNING, logger="detr_ext.engine.trainer"):
        trainer.train(0, 4)
    assert changed_steps(recorder) == [True, False, True, True]
    assert all(torch.isfinite(after).all() for after in recorder.after)
    assert trainer.nonfinite_skipped_steps == 1
    history = trainer.storage.history("nonfinite_skipped_steps").values()
    assert [(value, iteration) for value, iteration in history] == [
        (0, 0),
        (1, 1),
        (1, 2),
        (1, 3),
    ]
    warnings = [r.getMessage() for r in caplog.records if r.name == "detr_ext.engine.trainer"]
    assert len(warnings) == 1
    assert expected in warnings[0] and "at iteration 1:" in warnings[0]
    assert "Learning rate: 0.1." in warnings[0] and "1 skipped in this run" in warnings[0]
    # Training goes on from the skipped step: the loss still falls.
    losses = [value for value, _ in trainer.storage.history("total_loss").values()]
    assert losses[-1] < losses[0]


def test_an_inf_gradient_names_the_parameters_it_reached(caplog):
    trainer, _ = make(FlakyRegressor(inf_grad_at=[0]))
    with caplog.at_level(logging.WARNING, logger="detr_ext.engine.trainer"):
        trainer.train(0, 1)
    assert "in linear.weight, linear.bias) with a finite loss" in caplog.text


@pytest.mark.parametrize("flaw", ["inf_grad_at", "nan_loss_at"])
def test_consecutive_nonfinite_steps_stop_training_with_an_informative_error(tmp_path, flaw):
    model = FlakyRegressor(**{flaw: [2, 3, 4]})
    trainer, recorder = make(model, lr=0.05, max_consecutive_nonfinite=3)
    checkpointer = SafeCheckpointer(model, str(tmp_path), trainer=trainer)
    # The trainer finds the checkpointer through the hook, as in do_train.
    trainer.register_hooks([hooks.PeriodicCheckpointer(checkpointer, period=1)])
    with pytest.raises(NonFiniteTrainingError) as error:
        trainer.train(0, 10)
    message = str(error.value)
    what = "gradient" if flaw == "inf_grad_at" else "loss (loss_reg=nan)"
    assert f"Non-finite {what}" in message
    assert "at iteration 4;" in message and "last 3 steps in a row" in message
    assert "probable divergence" in message
    assert "Learning rate in use: 0.05." in message
    assert "The skipped steps did not change the weights." in message
    # Iterations 2 and 3 were skipped but checkpointed (unchanged, finite weights).
    assert f"Last good checkpoint: {tmp_path / 'model_0000003.pth'} (its weights" in message
    assert "--resume" in message
    assert changed_steps(recorder) == [True, True, False, False]
    assert trainer.nonfinite_skipped_steps == 3


def test_the_error_says_when_the_weights_themselves_overflowed():
    """A learning rate so large that one finite-gradient step overflows the weights: the next
    losses are NaN, and the error says why."""
    trainer, _ = make(FlakyRegressor(), lr=1e38, max_consecutive_nonfinite=2)
    with pytest.raises(NonFiniteTrainingError) as error:
        trainer.train(0, 10)
    message = str(error.value)
    assert "Non-finite loss (loss_mse=" in message
    assert re.search(r"Learning rate in use: 1e\+38\. The weights themselves", message)
    assert "linear.weight" in message
    assert "Last good checkpoint: unknown" in message


def test_nan_in_batchnorm_statistics_stops_at_once():
    trainer, _ = make(FlakyRegressor(nan_loss_at=[1], batchnorm=True))
    with pytest.raises(NonFiniteTrainingError, match=r"at iteration 1, .*norm\.running_mean"):
        trainer.train(0, 4)
    assert trainer.iter == 1


def test_max_consecutive_nonfinite_is_validated():
    with pytest.raises(ValueError, match="max_consecutive_nonfinite"):
        make(FlakyRegressor(), max_consecutive_nonfinite=0)


@pytest.mark.parametrize("clip", [None, {"max_norm": 0.1}], ids=["no-clip", "clip"])
def test_grad_scaler_overflow_is_not_divergence(caplog, clip):
    """With a GradScaler, an inf gradient is the scaler's overflow signal: it skips the step and
    halves its scale; the trainer neither counts it nor stops (even with a limit of 1)."""
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    trainer, recorder = make(
        FlakyRegressor(inf_grad_at=[1]),
        grad_scaler=scaler,
        clip_grad_params=clip,
        max_consecutive_nonfinite=1,
    )
    with caplog.at_level(logging.WARNING, logger="detr_ext.engine.trainer"):
        trainer.train(0, 3)
    assert changed_steps(recorder) == [True, False, True]
    assert trainer.nonfinite_skipped_steps == 0
    assert scaler.get_scale() == 512.0
    assert "Non-finite" not in caplog.text


@pytest.mark.parametrize("clip", [None, {"max_norm": 0.1}], ids=["no-clip", "clip"])
def test_grad_scaler_overflows_that_never_end_stop_training(clip):
    """Gradients inf at any scale: each step was skipped by the scaler and the run finished
    with rc 0 and untouched weights (the scale reached 0 after ~166 steps, then NaN got into the
    weights). Now max_consecutive_overflows in a row stop it; an isolated one resets the count."""
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    trainer, recorder = make(
        FlakyRegressor(inf_grad_at=[0, 1, 2, *range(4, 100)]),
        grad_scaler=scaler,
        clip_grad_params=clip,
        max_consecutive_overflows=4,
    )
    with pytest.raises(NonFiniteTrainingError, match="overflowed at iteration 7") as info:
        trainer.train(0, 50)
    assert "the 3 steps before it" in str(info.value)
    assert "max_consecutive_overflows=4" in str(info.value)
    assert changed_steps(recorder) == [False, False, False, True, False, False, False]
    assert scaler.get_scale() == 8.0  # 1024 halved 7 times
    assert trainer.storage.history("grad_scale").latest() == 8.0
    assert trainer.nonfinite_skipped_steps == 0


@pytest.mark.parametrize("clip", [None, {"max_norm": 0.1}], ids=["no-clip", "clip"])
def test_grad_scaler_with_scale_zero_never_steps(clip):
    """At a scale of 0 the scaler's own inf check (on the scaled gradients, 0) passes and
    unscaling writes NaN into the weights."""
    scaler = torch.amp.GradScaler("cpu", init_scale=0.0)
    trainer, recorder = make(FlakyRegressor(), grad_scaler=scaler, clip_grad_params=clip)
    with pytest.raises(NonFiniteTrainingError, match="GradScaler scale is 0.0"):
        trainer.train(0, 3)
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


def test_max_consecutive_overflows_is_validated():
    for bad in (0, -3, True):
        with pytest.raises(ValueError, match="max_consecutive_overflows"):
            make(FlakyRegressor(), max_consecutive_overflows=bad)


def test_grad_scaler_nonfinite_loss_is_counted_and_keeps_the_scale():
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    trainer, recorder = make(
        FlakyRegressor(nan_loss_at=[1]), grad_scaler=scaler, clip_grad_params={"max_norm": 0.1}
    )
    trainer.train(0, 3)
    assert changed_steps(recorder) == [True, False, True]
    assert trainer.nonfinite_skipped_steps == 1
    assert scaler.get_scale() == 1024.0


def test_skipped_step_count_survives_a_checkpoint_round_trip():
    trainer, _ = make(FlakyRegressor(nan_loss_at=[0]))
    trainer.train(0, 2)
    other, _ = make(FlakyRegressor())
    other.load_state_dict(trainer.state_dict())
    assert other.nonfinite_skipped_steps == 1


# --- Under DDP, every rank takes the same decision ------------------------------------------


def _ddp_worker(rank: int, world_size: int, init_file: str, out_dir: str) -> None:
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size
    )
    torch.set_num_threads(1)
    torch.manual_seed(0)
    # Rank 1's loss is NaN at its second step through a term without gradient, so its
    # gradients (and so everyone's, after DDP's all-reduce) stay finite: only an all-reduced
    # loss decision keeps rank 0 from stepping alone.
    model = FlakyRegressor()
    model.nan_stat_at = {1} if rank == 1 else set()
    ddp = nn.parallel.DistributedDataParallel(_WithStat(model))
    optimizer = torch.optim.SGD(ddp.parameters(), lr=0.1)
    trainer = Trainer(ddp, synthetic_loader(), optimizer)
    trainer.train(0, 3)
    weights = torch.cat([p.detach().flatten() for p in model.parameters()])
    torch.save(
        {"weights": weights, "skipped": trainer.nonfinite_skipped_steps},
        os.path.join(out_dir, f"rank{rank}.pth"),
    )
    torch.distributed.destroy_process_group()


class _WithStat(nn.Module):
    """Adds a gradient-free ``loss_stat`` term, NaN on the calls in ``module.nan_stat_at``."""

    def __init__(self, module: FlakyRegressor) -> None:
        super().__init__()
        self.module = module

    def forward(self, batch):
        call = self.module.calls
        losses = self.module(batch)
        losses["loss_stat"] = torch.tensor(float("nan") if call in self.module.nan_stat_at else 0.0)
        return losses


def test_ddp_ranks_skip_the_same_steps(tmp_path):
    world_size = 2
    context = torch.multiprocessing.start_processes(
        _ddp_worker,
        args=(world_size, str(tmp_path / "init"), str(tmp_path)),
        nprocs=world_size,
        join=False,
        start_method="fork",  # the children need no imports: seconds, not tens
    )
    try:
        # Forked workers finish in about a second; a rank that steps alone leaves the other
        # one waiting in a collective forever.
        for _ in range(60):
            if context.join(timeout=1):
                break
        else:
            pytest.fail("DDP workers did not finish within 60 s (ranks out of step?)")
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()
    results = [torch.load(tmp_path / f"rank{rank}.pth") for rank in range(world_size)]
    assert [result["skipped"] for result in results] == [1, 1]
    assert torch.equal(results[0]["weights"], results[1]["weights"])
