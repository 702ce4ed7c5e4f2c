"""The training step: mixed precision, gradient clipping and loss logging over detectron2's
:class:`~detectron2.engine.SimpleTrainer` (hooks, metric writing and state handling come from
there)."""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from detectron2.engine import SimpleTrainer
from torch import nn

from .ema import unwrap_model

__all__ = ["Trainer"]

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


class Trainer(SimpleTrainer):
    """Single-optimizer trainer with autocast, gradient clipping and a GradScaler.

    Precision, decided once from the model's device:

    - ``bf16=True``: bfloat16 autocast on CUDA or CPU, no gradient scaling (bfloat16 has
      float32's exponent range). Takes precedence over ``amp``.
    - ``amp=True`` on CUDA: float16 autocast with a :class:`torch.amp.GradScaler`.
    - ``amp=True`` on CPU: float16 autocast is not offered there, so training runs in float32
      and a warning is emitted once, when the trainer is built.

    Args:
        model: takes a batch from ``dataloader`` and returns a dict of scalar losses
            (or a single loss tensor) in training mode.
        dataloader: an iterable of batches.
        optimizer: a torch optimizer over the model's parameters.
        amp: float16 mixed precision (CUDA only).
        bf16: bfloat16 mixed precision.
        clip_grad_params: keyword arguments of :func:`torch.nn.utils.clip_grad_norm_`, e.g.
            ``{"max_norm": 0.1, "norm_type": 2}``; ``None`` disables clipping. Gradients are
            unscaled before clipping when a GradScaler is in use.
        grad_scaler: a GradScaler to use instead of a fresh one (fp16 on CUDA only).
        gather_metric_period, zero_grad_before_forward, async_write_metrics: as in
            :class:`~detectron2.engine.SimpleTrainer`.
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

        self.grad_scaler: torch.amp.GradScaler | None = None
        if self.autocast_dtype == torch.float16:
            self.grad_scaler = grad_scaler or torch.amp.GradScaler(self.device_type)

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.autocast_dtype)

    def run_step(self) -> None:
        """One iteration: forward under autocast, backward, clip, optimizer step, log losses."""
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

        if self.grad_scaler is not None:
            self.grad_scaler.scale(losses).backward()
        else:
            losses.backward()
        self.after_backward()

        if self.async_write_metrics:
            self.concurrent_executor.submit(
                self._write_metrics, loss_dict, data_time, iter=self.iter
            )
        else:
            self._write_metrics(loss_dict, data_time)

        if self.clip_grad_params is not None:
            if self.grad_scaler is not None:
                # Clip the true gradients, not the scaled ones.
                self.grad_scaler.unscale_(self.optimizer)
            self.clip_grads()

        if self.grad_scaler is not None:
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            self.optimizer.step()

    def clip_grads(self) -> torch.Tensor:
        """Clip the gradients of the optimizer's parameters; returns their total norm."""
        params = [
            param
            for group in self.optimizer.param_groups
            for param in group["params"]
            if param.grad is not None
        ]
        return torch.nn.utils.clip_grad_norm_(params, **self.clip_grad_params)

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        if self.grad_scaler is not None:
            state["grad_scaler"] = self.grad_scaler.state_dict()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        if self.grad_scaler is not None and "grad_scaler" in state_dict:
            self.grad_scaler.load_state_dict(state_dict["grad_scaler"])
