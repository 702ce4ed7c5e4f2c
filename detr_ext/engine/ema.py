"""Exponential moving average (EMA) of model weights, and the hook that keeps it up to date.

The EMA copy holds every entry of ``model.state_dict()`` (parameters and persistent buffers).
Floating-point entries are averaged, ``ema = d * ema + (1 - d) * current``; integer entries
(e.g. BatchNorm's ``num_batches_tracked``) are copied as they are.

The decay ``d`` of update ``t`` (1, 2, ...) ramps up to the configured ``decay`` over about
``warmup`` updates, ``d_t = decay * (1 - exp(-t / warmup))`` (YOLOX's ramp, which goes with its
``decay=0.9998``); ``warmup=0`` uses ``decay`` from the first update. Without the ramp a decay
of 0.9998 keeps ``0.9998 ** t`` of the random initial weights in the average: 82 % after 1000
updates, 37 % after 5000 (the first evaluation of a COCO recipe), so early EMA evaluations
score a mostly untrained model.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator
from typing import Any

import torch
from detectron2.engine import HookBase
from torch import nn
from torch.nn.parallel import DataParallel, DistributedDataParallel

__all__ = ["EMAHook", "ModelEMA", "apply_ema", "unwrap_model"]

logger = logging.getLogger(__name__)


def unwrap_model(model: nn.Module) -> nn.Module:
    """Return the module inside a ``DistributedDataParallel`` / ``DataParallel`` wrapper."""
    if isinstance(model, (DistributedDataParallel, DataParallel)):
        return model.module
    return model


class ModelEMA:
    """EMA copies of a model's parameters and buffers.

    Args:
        model: the model to track; a DDP / DataParallel wrapper is unwrapped.
        decay: weight of the running average per update once warmed up, in [0, 1).
        device: where the EMA tensors live (e.g. ``"cpu"`` to save accelerator memory);
            ``None`` keeps each tensor on the device of the model tensor it tracks.
        warmup: updates over which the decay ramps up to ``decay`` (see the module
            docstring), >= 0; 0 (the default here) uses ``decay`` from the first update.
            ``train.ema.warmup`` defaults to 2000.
    """

    def __init__(
        self,
        model: nn.Module,
        decay: float = 0.9998,
        device: str | torch.device | None = None,
        warmup: float = 0,
    ) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"ModelEMA: decay (train.ema.decay) must be in [0, 1), got {decay}")
        if isinstance(warmup, bool) or not isinstance(warmup, (int, float)) or not warmup >= 0:
            raise ValueError(
                f"ModelEMA: warmup (train.ema.warmup) must be a number of updates >= 0, got "
                f"{warmup!r}"
            )
        self.decay = float(decay)
        self.warmup = float(warmup)
        self.device = torch.device(device) if device else None
        self.num_updates = 0
        self.state: dict[str, torch.Tensor] = {}
        self.reset(model)

    def reset(self, model: nn.Module) -> None:
        """Restart the average from the current weights of ``model``."""
        self.state = {
            name: tensor.detach().clone().to(self.device or tensor.device)
            for name, tensor in unwrap_model(model).state_dict().items()
        }
        self.num_updates = 0

    def current_decay(self, update: int | None = None) -> float:
        """The decay of update ``update`` (1-based; default: the next one)."""
        t = self.num_updates + 1 if update is None else update
        if self.warmup == 0:
            return self.decay
        return self.decay * (1.0 - math.exp(-t / self.warmup))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold the current weights of ``model`` into the average (call after each step)."""
        model_state = unwrap_model(model).state_dict()
        self._check_keys(model_state.keys(), "update")
        decay = self.current_decay()
        for name, ema_tensor in self.state.items():
            current = model_state[name].detach().to(ema_tensor.device)
            if ema_tensor.is_floating_point():
                ema_tensor.lerp_(current.to(ema_tensor.dtype), 1.0 - decay)
            else:
                ema_tensor.copy_(current)
        self.num_updates += 1

    def state_dict(self) -> dict[str, Any]:
        """Checkpointable state (the averaged tensors, the decay, its warm-up and the update
        count)."""
        return {
            "decay": self.decay,
            "warmup": self.warmup,
            "num_updates": self.num_updates,
            "state": self.state,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state produced by :meth:`state_dict`, onto this EMA's devices. The averaged
        tensors and the update count are loaded; the decay stays this EMA's own (the
        configured one), with a warning if the state's differs."""
        if "state" not in state_dict:
            raise KeyError(
                "ModelEMA.load_state_dict: expected keys {'state', 'decay', 'num_updates'}, "
                f"got {sorted(state_dict)}"
            )
        loaded = state_dict["state"]
        self._check_keys(loaded.keys(), "load_state_dict")
        for name, ema_tensor in self.state.items():
            ema_tensor.copy_(loaded[name].to(ema_tensor.device))
        # The decay and its warm-up are hyperparameters: the configured ones stay (a resumed
        # run may change them).
        for key in ("decay", "warmup"):
            saved = state_dict.get(key)
            if saved is not None and float(saved) != getattr(self, key):
                logger.warning(
                    "EMA %s: the checkpoint's is %s, this EMA's (the config's train.ema.%s) %s; "
                    "continuing the average with %s.",
                    key,
                    saved,
                    key,
                    getattr(self, key),
                    getattr(self, key),
                )
        self.num_updates = int(state_dict.get("num_updates", 0))

    def copy_to(self, model: nn.Module) -> None:
        """Overwrite the weights of ``model`` with the EMA weights (in place)."""
        model_state = unwrap_model(model).state_dict()
        self._check_keys(model_state.keys(), "copy_to")
        with torch.no_grad():
            for name, ema_tensor in self.state.items():
                model_state[name].copy_(ema_tensor)

    def _check_keys(self, keys: Any, where: str) -> None:
        keys = set(keys)
        if keys != set(self.state):
            missing = sorted(set(self.state) - keys)[:5]
            unexpected = sorted(keys - set(self.state))[:5]
            raise KeyError(
                f"ModelEMA.{where}: model state does not match the EMA state; "
                f"missing {missing}, unexpected {unexpected} (first 5 shown)"
            )


@contextlib.contextmanager
def apply_ema(model: nn.Module, ema: ModelEMA | None) -> Iterator[nn.Module]:
    """Swap the EMA weights into ``model`` for the duration of the block, then restore.

    ``ema=None`` leaves the model untouched, so callers need no special case. The original
    weights are restored even if the block raises.
    """
    if ema is None:
        yield model
        return
    model_state = unwrap_model(model).state_dict()
    backup = {name: tensor.detach().clone() for name, tensor in model_state.items()}
    ema.copy_to(model)
    try:
        yield model
    finally:
        with torch.no_grad():
            for name, tensor in model_state.items():
                tensor.copy_(backup[name])


class EMAHook(HookBase):
    """Update a :class:`ModelEMA` after every training step.

    Register it before the checkpointer and evaluation hooks so that they see the EMA of the
    step that just finished. If the EMA has never been updated when training starts (a fresh
    run, or a checkpoint without EMA state), it restarts from the model's current weights, so
    that weights loaded from ``init_checkpoint`` are the starting point of the average.
    """

    def __init__(self, ema: ModelEMA, model: nn.Module) -> None:
        self.ema = ema
        self.model = model

    def before_train(self) -> None:
        if self.ema.num_updates == 0:
            self.ema.reset(self.model)
        else:
            logger.info("Continuing the EMA from %d updates.", self.ema.num_updates)

    def after_step(self) -> None:
        self.ema.update(self.model)
