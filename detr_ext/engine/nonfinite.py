"""Non-finite losses and gradients never reach the weights
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
signal. The scaler skips that step and halves its scale; such steps are not counted as above
(the current scale is logged as ``grad_scale``). But overflows that do not end (a gradient that
is NaN / inf at any scale: divergence, a loss whose gradient is not finite) would halve the
scale forever: the run would finish "successfully" without training, and once the scale reached
0 the scaler's own check (made on the scaled gradients, 0 there) would let NaN into the
weights. So ``max_consecutive_overflows`` overflows in a row (``train.amp``, default 30) stop
training with :class:`NonFiniteTrainingError`, and gradients the trainer itself found non-finite
(after ``unscale_``, when clipping) are never handed to ``scaler.step``. A non-finite *loss* is
not an overflow of the scaled backward pass and is counted as above.

Distributed training: the loss can be non-finite on one rank only, so the loss decision is
all-reduced (one scalar per step) and every rank skips the same steps. Gradients are already
identical on all ranks after DDP's all-reduce, so the gradient decision agrees by construction.

Order inside a step: zero_grad, forward, backward, (GradScaler ``unscale_``), gradient norm and
non-finite check, clip, optimizer step. The norm is computed once and reused for clipping, so
an inf norm is never used to scale gradients (``clip_grad_norm_`` would turn them into NaN).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import torch
import torch.distributed as dist
from detectron2.utils import comm
from fvcore.common.checkpoint import Checkpointer

from .checkpointer import describe_last_checkpoint, nonfinite_keys
from .ema import unwrap_model

__all__ = ["NonFiniteStepGuard", "NonFiniteTrainingError"]

# The warnings are the trainer's (one per skipped step): they keep its logger's name.
logger = logging.getLogger("detr_ext.engine.trainer")

# How many offending names (loss terms, parameters, buffers) a message lists.
_MAX_NAMES = 5


class NonFiniteTrainingError(FloatingPointError):
    """Training stopped because of non-finite losses / gradients (probable divergence)."""


def _names(names: list[str]) -> str:
    shown = ", ".join(names[:_MAX_NAMES])
    return shown + (f", ... ({len(names)} in all)" if len(names) > _MAX_NAMES else "")


class NonFiniteStepGuard:
    """The non-finite checks and the skipping of :class:`~detr_ext.engine.Trainer`'s steps, as
    a mixin of a detectron2 trainer with ``model``, ``optimizer``, ``storage``, ``iter``,
    ``checkpointer``, ``nonfinite_skipped_steps``, ``_consecutive_nonfinite``,
    ``max_consecutive_nonfinite``, ``grad_scaler``, ``_consecutive_overflows`` and
    ``max_consecutive_overflows``, and a ``_grads()`` method."""

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
            return (
                "loss on another rank (all loss terms are finite on this one; that rank's "
                "warning, in log.txt.rank<N> of train.output_dir, names them)"
            )
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

    def _scaler_step(self, nonfinite_gradient: bool) -> None:
        """``scaler.step`` + ``update``, or, for gradients already found non-finite, neither
        step nor the scaler's check: the scale is lowered by its backoff factor. Counts the
        overflows in a row and stops after ``max_consecutive_overflows``."""
        scaler = self.grad_scaler
        scale = scaler.get_scale()
        if scaler.is_enabled() and not scale > 0:
            # Only a scaler built with init_scale=0 gets here (overflows stop below first):
            # unscaling by 1 / 0 would turn every gradient into NaN past the scaler's check.
            raise NonFiniteTrainingError(
                f"GradScaler scale is {scale} at iteration {self.iter}: expected a positive "
                "scale (unscaling by 1/scale would write NaN into the weights)"
            )
        if nonfinite_gradient:
            self.optimizer.zero_grad()
            scaler.update(scale * scaler.get_backoff_factor())
        else:
            scaler.step(self.optimizer)
            scaler.update()
        new_scale = scaler.get_scale()
        self.storage.put_scalar("grad_scale", new_scale, smoothing_hint=False)
        if not nonfinite_gradient and new_scale >= scale:
            self._consecutive_overflows = 0
            return
        self._consecutive_overflows += 1
        if self._consecutive_overflows < self.max_consecutive_overflows and new_scale > 0:
            return
        raise NonFiniteTrainingError(
            f"Float16 gradients overflowed at iteration {self.iter} and in the "
            f"{self._consecutive_overflows - 1} steps before it, each skipped by the "
            f"GradScaler, whose scale is now {new_scale:.3g} "
            f"(train.amp.max_consecutive_overflows={self.max_consecutive_overflows}): not an "
            "occasional overflow but gradients that are NaN/inf at any scale, a probable "
            "divergence or a loss whose gradient is not finite. Learning rate in use: "
            f"{self._learning_rate()}. bfloat16 (train.bf16=True) has float32's range. "
            f"{self._resume_hint()}"
        )

    def _resume_hint(self) -> str:
        return (
            f"Last good checkpoint: {self._last_checkpoint()} (its weights are finite; the "
            "divergence may have begun before it: see the losses in metrics.json). To continue "
            "from it, rerun with --resume and the same train.output_dir, e.g. with a lower "
            "optimizer.lr, train.clip_grad.enabled=True, or a longer warm-up (--resume takes "
            "them from the config)."
        )
