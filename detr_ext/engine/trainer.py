"""The training step: mixed precision, gradient clipping, non-finite step guarding and loss
logging over detectron2's :class:`~detectron2.engine.SimpleTrainer` (hooks, metric writing and
state handling come from there).

Non-finite losses and gradients never reach the weights
-------------------------------------------------------
Before each optimizer step the trainer checks the total loss and the total gradient norm. A
step whose loss or gradient holds NaN / inf is **skipped**: the optimizer does not step (its
state, e.g. Adam's moments, is untouched), the gradients are zeroed, a warning names the
iteration, what was non-finite (which loss terms, or which parameters' gradients), the learning
rate and the running count of skipped steps, and ``nonfinite_skipped_steps`` is written to the
event storage (so to ``metrics.json`` / TensorBoard). A skipped step still counts as an
iteration (the LR schedule, EMA and checkpoint periods advance), so an isolated bad batch costs
one step.
After ``max_consecutive_nonfinite`` skipped steps in a row the run is treated as diverged and
stops with :class:`NonFiniteTrainingError` (a ``FloatingPointError``), whose message names the
iteration, what was non-finite, the learning rate, and the last good checkpoint to resume from.

Skipping (rather than stopping at the first bad step) because a single overflowing batch is
common in long DETR runs and harmless once it is kept out of the weights; stopping after K in a
row because a diverged run never recovers and only burns compute.

Float16 with a GradScaler: a non-finite *gradient* there is the scaler's normal overflow
signal. The scaler skips that step itself and lowers its scale; the trainer leaves it at that
and does not count it. A non-finite *loss* is not an overflow of the scaled backward pass and
is counted as above.

Distributed training: the loss can be non-finite on one rank only, so the loss decision is
all-reduced (one scalar per step) and every rank skips the same steps. Gradients are already
identical on all ranks after DDP's all-reduce, so the gradient decision agrees by construction.

Order inside a step: zero_grad, forward, backward, (GradScaler ``unscale_``), gradient norm and
non-finite check, clip, optimizer step. The norm is computed once and reused for clipping, so
an inf norm is never used to scale gradients (``clip_grad_norm_`` would turn them into NaN).
"""

from __future__ import annotations

import contextlib
import logging
import time
import warnings
from collections.abc import Iterable, Mapping
from typing import Any

import torch
import torch.distributed as dist
from detectron2.engine import SimpleTrainer
from detectron2.utils import comm
from fvcore.common.checkpoint import Checkpointer
from torch import nn

from .checkpointer import describe_last_checkpoint, nonfinite_keys
from .ema import unwrap_model

__all__ = ["NonFiniteTrainingError", "Trainer"]

logger = logging.getLogger(__name__)

_CLIP_GRAD_KEYS = {"max_norm", "norm_type", "error_if_nonfinite", "foreach"}
# How many offending names (loss terms, parameters, buffers) a message lists.
_MAX_NAMES = 5


class NonFiniteTrainingError(FloatingPointError):
    """Training stopped because of non-finite losses / gradients (probable divergence)."""


def _model_device_type(model: nn.Module) -> str:
    """``"cuda"`` or ``"cpu"`` (...), from the first parameter or buffer of the model."""
    for tensor in unwrap_model(model).parameters():
        return tensor.device.type
    for tensor in unwrap_model(model).buffers():
        return tensor.device.type
    return "cpu"


def _check_clip_grad_params(params: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if params is None:
        return None
    params = dict(params)
    unknown = set(params) - _CLIP_GRAD_KEYS
    if unknown:
        raise ValueError(
            f"clip_grad_params: unknown keys {sorted(unknown)}; expected a subset of "
            f"{sorted(_CLIP_GRAD_KEYS)} (the arguments of torch.nn.utils.clip_grad_norm_)"
        )
    if "max_norm" not in params or not params["max_norm"] > 0:
        raise ValueError(
            f"clip_grad_params: expected a positive 'max_norm', got {params.get('max_norm')!r}"
        )
    return params


def _names(names: list[str]) -> str:
    shown = ", ".join(names[:_MAX_NAMES])
    return shown + (f", ... ({len(names)} in all)" if len(names) > _MAX_NAMES else "")


class Trainer(SimpleTrainer):
    """Single-optimizer trainer with autocast, gradient clipping, a GradScaler, and steps with a
    non-finite loss or gradient skipped (see the module docstring).

    Precision, decided once from the model's device:

    - ``bf16=True``: bfloat16 autocast on CUDA or CPU, no gradient scaling (bfloat16 has
      float32's exponent range). Takes precedence over ``amp``.
    - ``amp=True`` on CUDA: float16 autocast with a :class:`torch.amp.GradScaler`.
    - ``amp=True`` on CPU: float16 autocast is not offered there, so training runs in float32
      and a warning is emitted once, when the trainer is built.
    - ``grad_scaler`` given: it is used as given (scale, unscale before clipping, step,
      update) whatever the autocast dtype, on any device, e.g. ``GradScaler("cpu")``.

    Args:
        model: takes a batch from ``dataloader`` and returns a dict of scalar losses
            (or a single loss tensor) in training mode.
        dataloader: an iterable of batches.
        optimizer: a torch optimizer over the model's parameters.
        amp: float16 mixed precision (CUDA only).
        bf16: bfloat16 mixed precision.
        clip_grad_params: keyword arguments of :func:`torch.nn.utils.clip_grad_norm_`, e.g.
            ``{"max_norm": 0.1, "norm_type": 2}``; ``None`` disables clipping. Gradients are
            unscaled before clipping when a GradScaler is in use. ``error_if_nonfinite=True``
            raises torch's ``RuntimeError`` at the first non-finite gradient (GradScaler
            overflows included) instead of skipping the step.
        grad_scaler: a GradScaler to use instead of the one ``amp`` would create.
        max_consecutive_nonfinite: stop with :class:`NonFiniteTrainingError` when this many
            steps in a row had a non-finite loss or gradient (1: stop at the first one).
        gather_metric_period, zero_grad_before_forward, async_write_metrics: as in
            :class:`~detectron2.engine.SimpleTrainer`.

    Attributes:
        checkpointer: the checkpointer saving this run (set it after building one), used only
            to name the last good checkpoint when training stops; when ``None``, the
            checkpointer of a registered ``PeriodicCheckpointer`` hook is used.
        nonfinite_skipped_steps: steps skipped so far for a non-finite loss / gradient
            (checkpointed with the trainer state).
    """

    def __init__(
        self,
        model: nn.Module,
        dataloader: Iterable,
        optimizer: torch.optim.Optimizer,
        amp: bool = False,
        bf16: bool = False,
        clip_grad_params: Mapping[str, Any] | None = None,
        grad_scaler: torch.amp.GradScaler | None = None,
        max_consecutive_nonfinite: int = 5,
        gather_metric_period: int = 1,
        zero_grad_before_forward: bool = False,
        async_write_metrics: bool = False,
    ) -> None:
        super().__init__(
            model,
            dataloader,
            optimizer,
            gather_metric_period=gather_metric_period,
            zero_grad_before_forward=zero_grad_before_forward,
            async_write_metrics=async_write_metrics,
        )
        self.device_type = _model_device_type(model)
        self.clip_grad_params = _check_clip_grad_params(clip_grad_params)
        if int(max_consecutive_nonfinite) < 1:
            raise ValueError(
                "Trainer: max_consecutive_nonfinite (train.max_consecutive_nonfinite) must be "
                f">= 1, got {max_consecutive_nonfinite!r}"
            )
        self.max_consecutive_nonfinite = int(max_consecutive_nonfinite)
        self.nonfinite_skipped_steps = 0
        self._consecutive_nonfinite = 0
        self.checkpointer: Checkpointer | None = None

        self.autocast_dtype: torch.dtype | None = None
        if bf16:
            self.autocast_dtype = torch.bfloat16
        elif amp and self.device_type == "cuda":
            self.autocast_dtype = torch.float16
        elif amp:
            warnings.warn(
                f"Trainer: amp=True needs a CUDA model, but the model is on "
                f"'{self.device_type}'; training in float32 instead (use bf16=True for "
                "mixed precision on CPU).",
                RuntimeWarning,
                stacklevel=2,
            )

        self.grad_scaler: torch.amp.GradScaler | None = grad_scaler
        if grad_scaler is None and self.autocast_dtype == torch.float16:
            self.grad_scaler = torch.amp.GradScaler(self.device_type)

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.autocast_dtype)

    def run_step(self) -> None:
        """One iteration: forward under autocast, backward, (unscale), non-finite check, clip,
        optimizer step, log losses. A step with a non-finite loss or gradient is skipped."""
        assert self.model.training, "[Trainer] model was changed to eval mode!"
        start = time.perf_counter()
        data = next(self._data_loader_iter)
        data_time = time.perf_counter() - start

        if self.zero_grad_before_forward:
            self.optimizer.zero_grad()
        with self._autocast():
            loss_dict = self.model(data)
            if isinstance(loss_dict, torch.Tensor):
                losses = loss_dict
                loss_dict = {"total_loss": loss_dict}
            else:
                losses = sum(loss_dict.values())
        if not self.zero_grad_before_forward:
            self.optimizer.zero_grad()

        # Backward even for a non-finite loss: under DDP every rank must join the gradient
        # all-reduce, whatever its own loss.
        if self.grad_scaler is not None:
            self.grad_scaler.scale(losses).backward()
        else:
            losses.backward()
        self.after_backward()

        if not self._finite_on_all_ranks(losses):
            # Before unscale_: the GradScaler has seen nothing of this step, so skipping it
            # leaves the scaler as it was (no scale backoff for a loss problem).
            self._skip_step(self._describe_nonfinite_loss(loss_dict))
            return

        if self.async_write_metrics:
            self.concurrent_executor.submit(
                self._write_metrics, loss_dict, data_time, iter=self.iter
            )
        else:
            self._write_metrics(loss_dict, data_time)

        grad_norm = None
        if self.clip_grad_params is not None:
            if self.grad_scaler is not None:
                # Clip the true gradients, not the scaled ones.
                self.grad_scaler.unscale_(self.optimizer)
            grad_norm = self.clip_grads()
        elif self.grad_scaler is None:
            grad_norm = self.gradient_norm()
        # With a GradScaler and no clipping, scaler.step unscales and checks for inf itself.

        if grad_norm is not None and not torch.isfinite(grad_norm):
            if self.grad_scaler is None:
                self._skip_step(self._describe_nonfinite_gradient(grad_norm))
                return
            # Float16 overflow of the scaled gradients: scaler.step below skips the optimizer
            # step and update() lowers the scale. Normal under fp16, not counted.

        if self.grad_scaler is not None:
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            self.optimizer.step()
        self._consecutive_nonfinite = 0
        self.storage.put_scalar(
            "nonfinite_skipped_steps", self.nonfinite_skipped_steps, smoothing_hint=False
        )

    def _grads(self) -> tuple[list[nn.Parameter], list[torch.Tensor]]:
        params = [
            param
            for group in self.optimizer.param_groups
            for param in group["params"]
            if param.grad is not None
        ]
        return params, [param.grad for param in params]

    def gradient_norm(self) -> torch.Tensor:
        """Total norm of the gradients of the optimizer's parameters (0-dim tensor); its
        ``norm_type`` is the clipping one (2 when clipping is off)."""
        clip = self.clip_grad_params or {}
        _, grads = self._grads()
        return torch.nn.utils.get_total_norm(
            grads,
            norm_type=clip.get("norm_type", 2.0),
            error_if_nonfinite=clip.get("error_if_nonfinite", False),
            foreach=clip.get("foreach"),
        )

    def clip_grads(self) -> torch.Tensor:
        """Clip the gradients of the optimizer's parameters; returns their total norm before
        clipping. A non-finite norm leaves the gradients as they are (scaling by
        ``max_norm / inf`` would turn them into NaN); the caller skips that step."""
        params, _ = self._grads()
        total_norm = self.gradient_norm()
        if torch.isfinite(total_norm):
            torch.nn.utils.clip_grads_with_norm_(
                params,
                self.clip_grad_params["max_norm"],
                total_norm,
                foreach=self.clip_grad_params.get("foreach"),
            )
        return total_norm

    def _finite_on_all_ranks(self, value: torch.Tensor) -> bool:
        """Whether ``value`` is finite on every rank (one all-reduce under DDP)."""
        finite = torch.isfinite(value.detach()).all()
        if comm.get_world_size() > 1:
            nonfinite = (~finite).to(torch.float32)
            dist.all_reduce(nonfinite, op=dist.ReduceOp.MAX)
            return not bool(nonfinite.item())
        return bool(finite)

    def _describe_nonfinite_loss(self, loss_dict: Mapping[str, torch.Tensor]) -> str:
        terms = [
            f"{name}={value.detach().float().sum().item()}"
            for name, value in loss_dict.items()
            if not torch.isfinite(value.detach()).all()
        ]
        if not terms:
            return "loss on another rank (all loss terms are finite on this one)"
        return f"loss ({_names(terms)})"

    def _describe_nonfinite_gradient(self, grad_norm: torch.Tensor) -> str:
        names = {param: name for name, param in unwrap_model(self.model).named_parameters()}
        bad = [
            names.get(param, "<unnamed parameter>")
            for param in self._grads()[0]
            if not torch.isfinite(param.grad).all()
        ]
        where = f" in {_names(bad)}" if bad else ""
        return f"gradient (total norm {grad_norm.item()}{where}) with a finite loss"

    def _learning_rate(self) -> str:
        rates = sorted({float(group["lr"]) for group in self.optimizer.param_groups})
        if len(rates) == 1:
            return f"{rates[0]:.6g}"
        return f"{rates[-1]:.6g} (largest of the param groups' {[f'{r:.3g}' for r in rates]})"

    def _last_checkpoint(self) -> str:
        checkpointer = self.checkpointer
        if checkpointer is None:
            for hook in self._hooks:
                if isinstance(getattr(hook, "checkpointer", None), Checkpointer):
                    checkpointer = hook.checkpointer
                    break
        return describe_last_checkpoint(checkpointer)

    def _skip_step(self, what: str) -> None:
        """Drop this step's gradients instead of stepping, warn, and stop after
        ``max_consecutive_nonfinite`` skipped steps in a row."""
        self.optimizer.zero_grad()
        self.nonfinite_skipped_steps += 1
        self._consecutive_nonfinite += 1
        self.storage.put_scalar(
            "nonfinite_skipped_steps", self.nonfinite_skipped_steps, smoothing_hint=False
        )
        lr = self._learning_rate()
        logger.warning(
            "Non-finite %s at iteration %d: optimizer step skipped (%d in a row, %d skipped in "
            "this run; training stops at %d in a row). Learning rate: %s.",
            what,
            self.iter,
            self._consecutive_nonfinite,
            self.nonfinite_skipped_steps,
            self.max_consecutive_nonfinite,
            lr,
        )
        model = unwrap_model(self.model)
        # The forward pass may have written NaN into buffers (e.g. BatchNorm running stats);
        # skipping the step cannot undo that, so such a model cannot train on.
        bad_buffers = nonfinite_keys(dict(model.named_buffers()))
        if bad_buffers:
            raise NonFiniteTrainingError(
                f"Non-finite {what} at iteration {self.iter}, and the forward pass wrote "
                f"NaN/inf into the model's buffers ({_names(bad_buffers)}), which skipping the "
                f"step cannot undo: probable divergence. Learning rate in use: {lr}. "
                f"{self._resume_hint()}"
            )
        if self._consecutive_nonfinite < self.max_consecutive_nonfinite:
            return
        bad_params = nonfinite_keys(dict(model.named_parameters()))
        weights = (
            f" The weights themselves are already non-finite ({_names(bad_params)}): an "
            "earlier optimizer step with a finite gradient overflowed them, a sign of a "
            "learning rate that is too large."
            if bad_params
            else " The skipped steps did not change the weights."
        )
        raise NonFiniteTrainingError(
            f"Non-finite {what} at iteration {self.iter}; the last "
            f"{self._consecutive_nonfinite} steps in a row were non-finite "
            f"(train.max_consecutive_nonfinite={self.max_consecutive_nonfinite}; "
            f"{self.nonfinite_skipped_steps} steps skipped in this run): probable divergence. "
            f"Learning rate in use: {lr}.{weights} {self._resume_hint()}"
        )

    def _resume_hint(self) -> str:
        return (
            f"Last good checkpoint: {self._last_checkpoint()}. To continue from it, rerun with "
            "--resume and the same train.output_dir, e.g. with a lower optimizer.lr, "
            "train.clip_grad.enabled=True, or a longer warm-up."
        )

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["nonfinite_skipped_steps"] = self.nonfinite_skipped_steps
        if self.grad_scaler is not None:
            state["grad_scaler"] = self.grad_scaler.state_dict()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.nonfinite_skipped_steps = int(state_dict.get("nonfinite_skipped_steps", 0))
        if self.grad_scaler is not None and "grad_scaler" in state_dict:
            self.grad_scaler.load_state_dict(state_dict["grad_scaler"])
