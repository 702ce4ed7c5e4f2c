"""Trainer: optimization, gradient clipping, mixed precision and checkpoint state."""

import itertools
import logging
import math

import pytest
import torch
from detectron2.engine import HookBase
from torch import nn

from detr_ext.engine import Trainer


class LinearRegressor(nn.Module):
    """Returns ``{"loss_mse"}`` for a batch ``(inputs [B, 3], targets [B])``."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 1)
        self.output_dtypes: list[torch.dtype] = []

    def forward(self, batch):
        inputs, targets = batch
        preds = self.linear(inputs).squeeze(-1)
        self.output_dtypes.append(preds.dtype)
        return {"loss_mse": ((preds.float() - targets) ** 2).mean()}


def synthetic_loader():
    """The same batch forever: ``inputs [8, 3]``, ``targets [8]``."""
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(8, 3, generator=generator)
    targets = inputs @ torch.tensor([1.0, -2.0, 0.5]) + 3.0
    return itertools.repeat((inputs, targets))


def make_trainer(momentum: float = 0.0, **kwargs) -> tuple[Trainer, LinearRegressor]:
    torch.manual_seed(0)
    model = LinearRegressor()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=momentum)
    return Trainer(model, synthetic_loader(), optimizer, **kwargs), model


def logged_losses(trainer: Trainer) -> list[float]:
    return [value for value, _ in trainer.storage.history("total_loss").values()]


def test_five_steps_lower_the_loss():
    trainer, _ = make_trainer()
    trainer.train(0, 5)
    losses = logged_losses(trainer)
    assert len(losses) == 5
    assert losses[-1] < 0.5 * losses[0]
    assert trainer.iter == 5


class GradNormProbe(HookBase):
    """Records the gradient norm after backward and right before the optimizer step."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.model = model
        self.before_clip: list[float] = []
        self.at_step: list[float] = []
        optimizer.register_step_pre_hook(lambda *_: self.at_step.append(self._norm()))

    def _norm(self) -> float:
        grads = [p.grad.detach().flatten() for p in self.model.parameters()]
        return torch.cat(grads).norm().item()

    def after_backward(self) -> None:
        self.before_clip.append(self._norm())


def test_clip_grad_bounds_the_norm_seen_by_the_optimizer():
    max_norm = 0.1
    trainer, model = make_trainer(clip_grad_params={"max_norm": max_norm, "norm_type": 2})
    probe = GradNormProbe(model, trainer.optimizer)
    trainer.register_hooks([probe])
    trainer.train(0, 3)
    assert len(probe.at_step) == 3
    assert min(probe.before_clip) > max_norm  # clipping had something to do
    assert max(probe.at_step) <= max_norm * (1 + 1e-4)


def test_cpu_grad_scaler_unscales_before_clipping():
    """With a GradScaler the gradients are unscaled, then clipped: at the optimizer step their
    norm is max_norm (the true norm being above it), not max_norm / scale."""
    max_norm, scale = 0.1, 1024.0
    scaler = torch.amp.GradScaler("cpu", init_scale=scale)
    trainer, model = make_trainer(
        grad_scaler=scaler, clip_grad_params={"max_norm": max_norm, "norm_type": 2}
    )
    assert trainer.grad_scaler is scaler and trainer.autocast_dtype is None
    probe = GradNormProbe(model, trainer.optimizer)
    trainer.register_hooks([probe])
    trainer.train(0, 3)
    assert len(probe.at_step) == 3
    true_norms = [norm / scale for norm in probe.before_clip]
    assert min(true_norms) > 10 * max_norm  # clipping had something to do
    assert probe.at_step == pytest.approx([max_norm] * 3, rel=1e-2)
    losses = logged_losses(trainer)
    assert losses[-1] < losses[0]


class BatchLoader:
    """Three different batches ``(inputs [8, 3], targets [8])``, then the first again."""

    def __init__(self) -> None:
        generator = torch.Generator().manual_seed(1)
        self.batches = []
        for _ in range(3):
            inputs = torch.randn(8, 3, generator=generator)
            self.batches.append((inputs, inputs @ torch.tensor([1.0, -2.0, 0.5]) + 3.0))

    def __iter__(self):
        return itertools.cycle(self.batches)


def test_gradient_at_each_step_is_that_of_its_own_batch():
    """The gradient the optimizer sees at step k is the gradient of batch k at the current
    weights, computed independently: nothing accumulates from earlier steps."""
    torch.manual_seed(0)
    model = LinearRegressor()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loader = BatchLoader()
    trainer = Trainer(model, loader, optimizer)
    seen: list[tuple[dict, list[torch.Tensor]]] = []

    def record(*_):
        weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
        seen.append((weights, [p.grad.detach().clone() for p in model.parameters()]))

    optimizer.register_step_pre_hook(record)
    trainer.train(0, 3)
    assert len(seen) == 3
    for (weights, grads), (inputs, targets) in zip(seen, loader.batches, strict=True):
        reference = LinearRegressor()
        reference.load_state_dict(weights)
        reference((inputs, targets))["loss_mse"].backward()
        for grad, param in zip(grads, reference.parameters(), strict=True):
            torch.testing.assert_close(grad, param.grad)


def test_clip_grad_params_are_validated():
    with pytest.raises(ValueError, match="max_norm"):
        make_trainer(clip_grad_params={"norm_type": 2})
    with pytest.raises(ValueError, match="unknown keys"):
        make_trainer(clip_grad_params={"max_norm": 1.0, "max_nrom": 2})
    with pytest.raises(ValueError, match="expected a positive 'max_norm', got 0"):
        make_trainer(clip_grad_params={"max_norm": 0})


def test_bf16_autocast_on_cpu_trains():
    trainer, model = make_trainer(bf16=True)
    assert trainer.autocast_dtype == torch.bfloat16 and trainer.grad_scaler is None
    trainer.train(0, 3)
    assert set(model.output_dtypes) == {torch.bfloat16}
    assert model.linear.weight.dtype == torch.float32
    losses = logged_losses(trainer)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0]


def test_amp_on_cpu_falls_back_to_float32_with_a_warning(caplog):
    """Logged, so that log.txt of the run has it (warnings.warn went to stderr only)."""
    with caplog.at_level(logging.WARNING, logger="detr_ext.engine.trainer"):
        trainer, model = make_trainer(amp=True)
    assert "amp=True needs a CUDA model, but the model is on 'cpu'; training in float32" in (
        caplog.text
    )
    assert trainer.autocast_dtype is None and trainer.grad_scaler is None
    trainer.train(0, 2)
    assert set(model.output_dtypes) == {torch.float32}


def test_state_dict_round_trip_restores_iteration_and_optimizer():
    trainer, _ = make_trainer(momentum=0.9)
    trainer.train(0, 2)
    state = trainer.state_dict()
    assert state["iteration"] == 2 and "grad_scaler" not in state
    other, _ = make_trainer(momentum=0.9)
    other.load_state_dict(state)
    assert other.iter == 2
    assert other.optimizer.state_dict()["state"].keys() == state["optimizer"]["state"].keys()


# Found by `make mutate` (mutmut survivors).
def test_clip_norm_type_is_the_configured_one():
    """``norm_type`` 1 clips the L1 norm of all gradients together to ``max_norm``."""
    max_norm = 0.1
    trainer, model = make_trainer(clip_grad_params={"max_norm": max_norm, "norm_type": 1.0})
    l1_at_step = []
    trainer.optimizer.register_step_pre_hook(
        lambda *_: l1_at_step.append(sum(p.grad.abs().sum().item() for p in model.parameters()))
    )
    trainer.train(0, 2)
    assert l1_at_step == pytest.approx([max_norm] * 2, rel=1e-4)
    assert trainer.gradient_norm().item() == pytest.approx(max_norm, rel=1e-4)


def test_grad_scaler_and_skip_count_survive_a_checkpoint_round_trip():
    """The GradScaler's scale is checkpointed and restored (a resumed fp16 run does not restart
    at the initial scale); a checkpoint from before the skip counter existed counts 0."""
    trainer, _ = make_trainer(grad_scaler=torch.amp.GradScaler("cpu", init_scale=256.0))
    trainer.train(0, 2)
    trainer.grad_scaler.update(new_scale=32.0)
    trainer.nonfinite_skipped_steps = 3
    state = trainer.state_dict()
    assert state["grad_scaler"]["scale"] == 32.0 and state["nonfinite_skipped_steps"] == 3
    other, _ = make_trainer(grad_scaler=torch.amp.GradScaler("cpu", init_scale=256.0))
    other.load_state_dict(state)
    assert other.grad_scaler.get_scale() == 32.0 and other.nonfinite_skipped_steps == 3
    del state["nonfinite_skipped_steps"]
    other.load_state_dict(state)
    assert other.nonfinite_skipped_steps == 0
    plain, _ = make_trainer()
    plain.load_state_dict(state)  # a scaler state without a scaler: ignored
    assert plain.grad_scaler is None


def test_defaults_are_plain_float32_steps_with_five_skips_allowed():
    trainer, _ = make_trainer()
    assert trainer.autocast_dtype is None and trainer.grad_scaler is None
    assert trainer.clip_grad_params is None and trainer.max_consecutive_nonfinite == 5
    assert not trainer.zero_grad_before_forward and not trainer.async_write_metrics


class TensorLossRegressor(LinearRegressor):
    """Returns the loss as a bare scalar tensor, which detectron2's trainers accept."""

    def forward(self, batch):
        return super().forward(batch)["loss_mse"]


def test_a_bare_loss_tensor_is_logged_as_total_loss_with_data_time():
    torch.manual_seed(0)
    model = TensorLossRegressor()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    trainer = Trainer(model, synthetic_loader(), optimizer)
    trainer.train(0, 3)
    losses = logged_losses(trainer)
    assert len(losses) == 3 and losses[-1] < losses[0]
    data_times = [value for value, _ in trainer.storage.history("data_time").values()]
    assert len(data_times) == 3 and all(0 <= t < 5 for t in data_times)


@pytest.mark.cuda
def test_fp16_amp_on_cuda_scales_unscales_and_clips():
    torch.manual_seed(0)
    model = LinearRegressor().cuda()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loader = ((x.cuda(), y.cuda()) for x, y in synthetic_loader())
    trainer = Trainer(model, loader, optimizer, amp=True, clip_grad_params={"max_norm": 0.1})
    probe = GradNormProbe(model, optimizer)
    trainer.register_hooks([probe])
    trainer.train(0, 8)
    assert trainer.grad_scaler is not None
    assert set(model.output_dtypes) == {torch.float16}
    # Gradients reach the optimizer unscaled, then clipped: their norm is max_norm, not
    # max_norm / scale. The true norm of this regression's gradient is far above 0.1.
    assert probe.at_step and probe.at_step == pytest.approx([0.1] * len(probe.at_step), rel=1e-2)
    # At the scaler's first scale (2^16) float16 gradients overflow (on an H200 the first three
    # steps' were inf / nan): the scaler skips those steps, which never reach the optimizer, and
    # halves its scale for each. The steps it takes had scaled, finite gradients.
    finite = [norm for norm in probe.before_clip if math.isfinite(norm)]
    skipped = len(probe.before_clip) - len(finite)
    assert len(finite) == len(probe.at_step) and min(finite) > 1000  # scaled by the GradScaler
    assert trainer.grad_scaler.get_scale() == 2.0**16 * 0.5**skipped
    state = trainer.state_dict()
    assert "grad_scaler" in state
    trainer.load_state_dict(state)
