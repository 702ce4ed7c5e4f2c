"""The training step: mixed precision, gradient clipping, non-finite step guarding and loss
logging over detectron2's :class:`~detectron2.engine.SimpleTrainer` (hooks, metric writing and
state handling come from there).

Non-finite losses and gradients are kept out of the weights (:mod:`.nonfinite`): such a step
is skipped, with a warning; training stops after ``max_consecutive_nonfinite`` in a row.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from detectron2.engine import SimpleTrainer
from fvcore.common.checkpoint import Checkpointer
from torch import nn

from .ema import unwrap_model
from .nonfinite import NonFiniteStepGuard, NonFiniteTrainingError

__all__ = ["NonFiniteTrainingError", "Trainer"]

logger = logging.getLogger(__name__)

_CLIP_GRAD_KEYS = {"max_norm", "norm_type", "error_if_nonfinite", "foreach"}


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


def _mean_loss_dict(loss_dicts: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The loss terms averaged over the accumulated batches (the dict itself for one)."""
    if len(loss_dicts) == 1:
        return loss_dicts[0]
    names = list(loss_dicts[0])
    for loss_dict in loss_dicts[1:]:
        if list(loss_dict) != names:
            raise ValueError(
                "Trainer: with gradient accumulation every batch must give the same loss terms; "
                f"got {names} and {list(loss_dict)}"
            )
    return {
        name: torch.stack([d[name].detach().float() for d in loss_dicts]).mean() for name in names
    }


class Trainer(NonFiniteStepGuard, SimpleTrainer):
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
        max_consecutive_overflows: with a GradScaler, stop with
            :class:`NonFiniteTrainingError` when this many steps in a row overflowed (each
            skipped by the scaler, which halves its scale): 30 halvings take the default
            initial scale 65536 to 6e-5, far below what a healthy float16 run needs.
        accumulation_steps: batches whose gradients one optimizer step accumulates (gradient
            accumulation; 1 = one batch per step). Each batch's losses are scaled by
            ``1 / accumulation_steps``, so a step's gradient is the mean of its batches' and,
            when their losses are means of equally weighted parts (equal object counts for
            the DETR losses), that of one batch of them all. Under DDP the gradient all-reduce
            runs once per step (``no_sync`` for the other batches).
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
        max_consecutive_overflows: int = 30,
        accumulation_steps: int = 1,
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
        if isinstance(max_consecutive_overflows, bool) or int(max_consecutive_overflows) < 1:
            raise ValueError(
                "Trainer: max_consecutive_overflows (train.amp.max_consecutive_overflows) must "
                f"be an int >= 1, got {max_consecutive_overflows!r}"
            )
        self.max_consecutive_overflows = int(max_consecutive_overflows)
        self._consecutive_overflows = 0
        if isinstance(accumulation_steps, bool) or int(accumulation_steps) != accumulation_steps:
            raise ValueError(
                "Trainer: accumulation_steps (train.grad_accumulation_steps) must be an int "
                f">= 1, got {accumulation_steps!r}"
            )
        if accumulation_steps < 1:
            raise ValueError(
                "Trainer: accumulation_steps (train.grad_accumulation_steps) must be >= 1, got "
                f"{accumulation_steps!r}"
            )
        self.accumulation_steps = int(accumulation_steps)
        self.nonfinite_skipped_steps = 0
        self._consecutive_nonfinite = 0
        self.checkpointer: Checkpointer | None = None

        self.autocast_dtype: torch.dtype | None = None
        if bf16:
            self.autocast_dtype = torch.bfloat16
        elif amp and self.device_type == "cuda":
            self.autocast_dtype = torch.float16
        elif amp:
            # Logged (so that log.txt has it), not warnings.warn.
            logger.warning(
                "Trainer: amp=True needs a CUDA model, but the model is on '%s'; training in "
                "float32 instead (use bf16=True for mixed precision on CPU).",
                self.device_type,
            )

        self.grad_scaler: torch.amp.GradScaler | None = grad_scaler
        if grad_scaler is None and self.autocast_dtype == torch.float16:
            self.grad_scaler = torch.amp.GradScaler(self.device_type)

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.autocast_dtype)

    def run_step(self) -> None:
        """One iteration: forward under autocast and backward for each of the
        ``accumulation_steps`` batches, (unscale), non-finite check, clip, optimizer step, log
        losses. A step with a non-finite loss or gradient is skipped."""
        assert self.model.training, "[Trainer] model was changed to eval mode!"
        data_time = 0.0
        loss_dicts: list[dict[str, torch.Tensor]] = []
        totals: list[torch.Tensor] = []
        if self.zero_grad_before_forward:
            self.optimizer.zero_grad()
        for index in range(self.accumulation_steps):
            start = time.perf_counter()
            data = next(self._data_loader_iter)
            data_time += time.perf_counter() - start
            last = index == self.accumulation_steps - 1
            # DDP all-reduces the gradients in the last batch's backward only.
            no_sync = getattr(self.model, "no_sync", None)
            with contextlib.nullcontext() if last or no_sync is None else no_sync():
                with self._autocast():
                    loss_dict = self.model(data)
                    if isinstance(loss_dict, torch.Tensor):
                        losses = loss_dict
                        loss_dict = {"total_loss": loss_dict}
                    else:
                        losses = sum(loss_dict.values())
                if index == 0 and not self.zero_grad_before_forward:
                    self.optimizer.zero_grad()
                if self.accumulation_steps > 1:
                    losses = losses / self.accumulation_steps
                # Backward even for a non-finite loss: under DDP every rank must join the
                # gradient all-reduce, whatever its own loss.
                if self.grad_scaler is not None:
                    self.grad_scaler.scale(losses).backward()
                else:
                    losses.backward()
            if self.accumulation_steps > 1:  # keep no graph of earlier batches alive
                loss_dict = {name: value.detach() for name, value in loss_dict.items()}
            loss_dicts.append(loss_dict)
            totals.append(losses.detach())
        self.after_backward()
        loss_dict = _mean_loss_dict(loss_dicts)

        if not self._finite_on_all_ranks(torch.stack(totals)):
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

        nonfinite_gradient = grad_norm is not None and not bool(torch.isfinite(grad_norm))
        if self.grad_scaler is not None:
            # Float16 overflow of the scaled gradients: the step is skipped and the scale
            # lowered. Normal under fp16, stopped only when it does not end (.nonfinite).
            self._scaler_step(nonfinite_gradient)
        elif nonfinite_gradient:
            self._skip_step(self._describe_nonfinite_gradient(grad_norm))
            return
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
