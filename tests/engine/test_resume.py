"""--resume: the config's optimizer hyperparameters win over the checkpoint's, and a checkpoint
past train.max_iter is refused (the end-to-end runs are in test_train_net.py)."""

import logging

import pytest
import torch
from detectron2.solver import LRMultiplier
from fvcore.common.param_scheduler import MultiStepParamScheduler
from torch import nn

from detr_ext.engine import ResumeError
from detr_ext.engine.resume import (
    check_resume_iteration,
    configured_hyperparameters,
    restore_configured_hyperparameters,
)

MAX_ITER = 10
MULTIPLIER = MultiStepParamScheduler(values=[1.0, 0.1], milestones=[5], num_updates=MAX_ITER)


def adamw(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """Two groups, as detectron2's get_default_optimizer_params makes them: the norm layer's
    parameters without weight decay, the backbone-like first layer at a tenth of the lr."""
    return torch.optim.AdamW(
        [
            {"params": model[0].parameters(), "lr": lr / 10, "weight_decay": weight_decay},
            {"params": model[1].parameters(), "lr": lr, "weight_decay": 0.0},
        ],
        lr=lr,
        weight_decay=weight_decay,
    )


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 3), nn.LayerNorm(3))


def checkpoint_after(steps: int, lr: float, weight_decay: float) -> dict:
    """The optimizer state of a run trained ``steps`` iterations under LRMultiplier."""
    net = model()
    optimizer = adamw(net, lr, weight_decay)
    scheduler = LRMultiplier(optimizer, MULTIPLIER, MAX_ITER)
    for _ in range(steps):
        net(torch.randn(2, 3)).sum().backward()
        optimizer.step()
        scheduler.step()
    return optimizer.state_dict()


def resume(state: dict, lr: float, weight_decay: float, restore: bool):
    """Load ``state`` into an optimizer built with the new settings, as do_train does; return
    it after the scheduler of the resumed run is built (at iteration 6, past the milestone)."""
    optimizer = adamw(model(), lr, weight_decay)
    configured = configured_hyperparameters(optimizer)
    optimizer.load_state_dict(state)
    changes = restore_configured_hyperparameters(optimizer, configured) if restore else []
    LRMultiplier(optimizer, MULTIPLIER, MAX_ITER, last_iter=5)
    return optimizer, changes


def test_the_configs_learning_rate_and_weight_decay_are_used_after_loading():
    state = checkpoint_after(6, lr=1e-2, weight_decay=1e-4)
    # detectron2 alone: the checkpoint's base lr (1e-2) is scheduled, the config's is ignored.
    ignored, _ = resume(state, lr=1e-3, weight_decay=0.05, restore=False)
    assert ignored.param_groups[1]["lr"] == pytest.approx(1e-2 * 0.1)

    optimizer, changes = resume(state, lr=1e-3, weight_decay=0.05, restore=True)
    first, second = optimizer.param_groups
    assert first["lr"] == pytest.approx(1e-4 * 0.1) and second["lr"] == pytest.approx(1e-3 * 0.1)
    assert (first["initial_lr"], second["initial_lr"]) == (1e-4, 1e-3)
    assert (first["weight_decay"], second["weight_decay"]) == (0.05, 0.0)
    assert changes == [
        "lr: 0.001 -> 0.0001 (1 of 2 parameter groups)",
        "lr: 0.01 -> 0.001 (1 of 2 parameter groups)",
        "weight_decay: 0.0001 -> 0.05 (1 of 2 parameter groups)",
    ]
    # The optimizer's state (moments, step counts) is the checkpoint's.
    assert all(
        torch.equal(optimizer.state[param]["exp_avg"], saved["exp_avg"])
        for param, saved in zip(first["params"], state["state"].values(), strict=False)
    )


def test_same_settings_change_nothing_and_betas_compare_as_lists_or_tuples():
    state = checkpoint_after(3, lr=1e-2, weight_decay=1e-4)
    for group in state["param_groups"]:
        group["betas"] = list(group["betas"])  # as an OmegaConf list would give them
    optimizer, changes = resume(state, lr=1e-2, weight_decay=1e-4, restore=True)
    assert changes == []
    assert optimizer.param_groups[1]["lr"] == pytest.approx(1e-2 * 0.1)


def test_a_different_number_of_groups_is_an_error():
    optimizer = adamw(model(), 1e-2, 1e-4)
    with pytest.raises(ResumeError, match="has 2 parameter groups, the config's 1"):
        restore_configured_hyperparameters(optimizer, [{"lr": 1e-2}])


def test_a_checkpoint_past_max_iter_is_refused(caplog):
    with pytest.raises(ResumeError) as info:
        check_resume_iteration("out/model_0000009.pth", start_iter=10, max_iter=6)
    message = str(info.value)
    assert "out/model_0000009.pth was saved after iteration 10" in message
    assert "past train.max_iter=6" in message and "--eval-only" in message
    with caplog.at_level(logging.INFO, logger="detr_ext.engine.resume"):
        check_resume_iteration("out/model_0000003.pth", start_iter=4, max_iter=6)
        assert not caplog.records
        check_resume_iteration("out/model_final.pth", start_iter=6, max_iter=6)  # a finished run
    assert [record.getMessage() for record in caplog.records] == [
        "--resume: out/model_final.pth is the end of training (train.max_iter=6): nothing to "
        "train, evaluating it."
    ]
