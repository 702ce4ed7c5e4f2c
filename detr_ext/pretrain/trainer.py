"""The DINO self-distillation loop on detectron2's trainer machinery: a ``TrainerBase`` whose
step sets the scheduled learning rate, weight decay and teacher momentum, runs the student and
teacher on a multi-crop batch, clips the student's gradients, keeps the head's last layer frozen
for the first steps and then updates the EMA teacher; hooks time the steps, print progress with
ETA, save checkpoints through :class:`~detr_ext.engine.checkpointer.SafeCheckpointer` and run
the k-NN probe."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterable

import torch
from detectron2.engine import TrainerBase, hooks
from detectron2.utils.events import CommonMetricPrinter, JSONWriter
from torch import nn

from ..engine.checkpointer import PeriodicCheckpointer, SafeCheckpointer, describe_last_checkpoint
from ..engine.nonfinite import NonFiniteTrainingError
from .head import DINOHead
from .knn import KNNProbe
from .loss import DINOLoss
from .model import BackboneEmbedder, SelfDistillation
from .options import PretrainOptions
from .schedules import cosine_schedule

__all__ = [
    "DINOPretrainer",
    "ProbeHook",
    "build_pretrain_hooks",
    "build_pretrain_model",
    "load_probe_history",
    "param_groups",
]

logger = logging.getLogger(__name__)


def build_pretrain_model(
    backbone: nn.Module, options: PretrainOptions
) -> tuple[SelfDistillation, DINOLoss]:
    """``(SelfDistillation, DINOLoss)`` around ``backbone`` (a detectron2 ``Backbone``): its
    ``options.in_feature`` output, pooled, feeds a ``DINOHead``."""
    shapes = backbone.output_shape()
    if options.in_feature not in shapes:
        raise ValueError(
            f"in_feature: expected one of the backbone's outputs {sorted(shapes)}, got "
            f"{options.in_feature!r}"
        )
    head = DINOHead(
        shapes[options.in_feature].channels,
        out_dim=options.out_dim,
        hidden_dim=options.hidden_dim,
        bottleneck_dim=options.bottleneck_dim,
        use_bn=bool(options.head_bn),
    )
    student = BackboneEmbedder(backbone, in_feature=options.in_feature, head=head)
    model = SelfDistillation(student, teacher_momentum=options.teacher_momentum)
    loss = DINOLoss(
        options.out_dim,
        num_global_crops=2,
        student_temp=options.student_temp,
        teacher_temp=options.teacher_temp,
        warmup_teacher_temp=options.warmup_teacher_temp,
        warmup_teacher_temp_iters=options.warmup_teacher_temp_iters,
        center_momentum=options.center_momentum,
    )
    return model, loss


def param_groups(module: nn.Module) -> list[dict]:
    """DINO's AdamW groups: weights (``ndim > 1``) regularized, biases and normalization
    parameters (``ndim <= 1``) with no weight decay. Frozen parameters are left out."""
    decayed, not_decayed = [], []
    for parameter in module.parameters():
        if parameter.requires_grad:
            (decayed if parameter.ndim > 1 else not_decayed).append(parameter)
    return [
        {"params": decayed, "regularized": True},
        {"params": not_decayed, "regularized": False, "weight_decay": 0.0},
    ]


class DINOPretrainer(TrainerBase):
    """Self-distillation training of ``model.student`` against its EMA ``model.teacher``.

    Args:
        model: a ``SelfDistillation`` (``forward(crops) -> (student_out, teacher_out)``,
            ``update_teacher(momentum)``).
        loss: a ``DINOLoss`` (``loss(student_out, teacher_out, iteration) -> scalar``).
        data_loader: endless iterable of crop lists ``[B, 3, s, s]`` (2 global views first).
        optimizer: over the student's parameters; groups flagged ``regularized`` get the
            scheduled weight decay.
        options: schedules, clipping and freezing (:class:`PretrainOptions`).
    """

    def __init__(
        self,
        model: nn.Module,
        loss: nn.Module,
        data_loader: Iterable,
        optimizer: torch.optim.Optimizer,
        options: PretrainOptions,
    ) -> None:
        super().__init__()
        self.model, self.loss, self.optimizer, self.options = model, loss, optimizer, options
        self.data_loader = data_loader
        self._data_loader_iter_obj = None  # SimpleTrainer's name: DataStreamState checks it
        total = options.max_iter
        self.lr_schedule = cosine_schedule(
            options.lr, options.min_lr, total, warmup_iters=options.warmup_iters
        )
        self.wd_schedule = cosine_schedule(options.weight_decay, options.weight_decay_end, total)
        self.momentum_schedule = cosine_schedule(
            options.teacher_momentum, options.teacher_momentum_end, total
        )
        self.last_layer_params = [
            parameter
            for name, parameter in model.student.named_parameters()
            if ".last_layer." in f".{name}"
        ]

    def run_step(self) -> None:
        assert self.model.training, "DINOPretrainer: the model is in eval mode"
        if self._data_loader_iter_obj is None:
            self._data_loader_iter_obj = iter(self.data_loader)
        start = time.perf_counter()
        crops = next(self._data_loader_iter_obj)
        data_time = time.perf_counter() - start

        iteration = self.iter
        lr, weight_decay = self.lr_schedule(iteration), self.wd_schedule(iteration)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
            if group.get("regularized", True):
                group["weight_decay"] = weight_decay

        device = next(self.model.parameters()).device
        crops = [view.to(device, non_blocking=True) for view in crops]
        student_out, teacher_out = self.model(crops)
        loss = self.loss(student_out, teacher_out, iteration)
        if not torch.isfinite(loss):
            raise NonFiniteTrainingError(self._divergence_message(loss.item(), lr))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        student_params = [p for p in self.model.student.parameters() if p.grad is not None]
        grad_norm = torch.tensor(0.0)
        if self.options.clip_grad > 0:
            grad_norm = torch.nn.utils.clip_grad_norm_(student_params, self.options.clip_grad)
        if iteration < self.options.freeze_last_layer_iters:
            for parameter in self.last_layer_params:
                parameter.grad = None
        self.optimizer.step()
        momentum = self.momentum_schedule(iteration)
        self.model.update_teacher(momentum)

        self.storage.put_scalars(
            dino_loss=loss.item(),
            lr=lr,
            weight_decay=weight_decay,
            teacher_momentum=momentum,
            grad_norm=float(grad_norm),
            data_time=data_time,
            smoothing_hint=False,
        )

    def _divergence_message(self, loss: float, lr: float) -> str:
        checkpointer = next(
            (hook.checkpointer for hook in self._hooks if hasattr(hook, "checkpointer")), None
        )
        if checkpointer is not None and checkpointer.save_dir and checkpointer.has_checkpoint():
            last = describe_last_checkpoint(checkpointer)
        else:
            last = "none yet (--resume would start from scratch)"
        options = self.options
        return (
            f"DINO loss is {loss} at iteration {self.iter}: probable divergence. Learning rate "
            f"in use: {lr:.6g} (lr={options.lr:g}, warmup_fraction={options.warmup_fraction:g}, "
            f"clip_grad={options.clip_grad:g}). Last good checkpoint: "
            f"{last} (its weights are finite; the divergence "
            "may have begun before it: see dino_loss and grad_norm in metrics.json). To "
            "continue from it, rerun with --resume and the same --output-dir, e.g. with a "
            "lower lr=..., clip_grad=... > 0, or a longer warmup_fraction=... (--resume takes "
            "these options from the command line)."
        )


class ProbeHook(hooks.HookBase):
    """Run ``probe`` on the teacher (DINO evaluates the teacher) before training when it
    starts at iteration 0, every ``period`` iterations, and after the last one; put
    ``knn_accuracy`` into the event storage, log it and append ``{"iteration", "accuracy"}``
    to ``history`` (iteration = steps done), written to ``output_file`` as JSON if given.

    Args:
        probe: a :class:`KNNProbe`.
        period: iterations between probes (0: before and after training only).
        history: earlier results (a resumed run's), extended in place.
    """

    def __init__(
        self,
        probe: KNNProbe,
        period: int,
        history: list[dict] | None = None,
        output_file: str | None = None,
    ) -> None:
        self.probe, self.period = probe, period
        self.history = [] if history is None else history
        self.output_file = output_file

    def _run(self, steps_done: int) -> None:
        if self.history and self.history[-1]["iteration"] == steps_done:
            return
        accuracy = self.probe(self.trainer.model.teacher)
        self.history.append({"iteration": steps_done, "accuracy": accuracy})
        self.trainer.storage.put_scalar("knn_accuracy", accuracy, smoothing_hint=False)
        message = f"k-NN probe after {steps_done} iterations: accuracy {accuracy:.4f}"
        logger.info(message)
        if self.output_file:
            from ..utils.file_io import atomic_write_json

            atomic_write_json(self.output_file, self.history)

    def before_train(self) -> None:
        if self.trainer.start_iter == 0:
            self._run(0)

    def after_step(self) -> None:
        steps_done = self.trainer.iter + 1
        if self.period > 0 and steps_done % self.period == 0 and steps_done < self.trainer.max_iter:
            self._run(steps_done)

    def after_train(self) -> None:
        if self.trainer.iter >= self.trainer.max_iter:
            self._run(self.trainer.max_iter)


def build_pretrain_hooks(
    trainer: DINOPretrainer,
    checkpointer: SafeCheckpointer,
    output_dir: str,
    probe: KNNProbe | None,
    probe_history: list[dict] | None = None,
) -> list[hooks.HookBase]:
    """Timer, checkpoints, probe, and progress printing (last, so it sees the probe's value)."""
    options = trainer.options
    result: list[hooks.HookBase] = [
        hooks.IterationTimer(),
        # detr_ext's hook: checks its period (options.validate() names the option first).
        PeriodicCheckpointer(checkpointer, options.checkpoint_period, max_iter=options.max_iter),
    ]
    if probe is not None:
        result.append(
            ProbeHook(
                probe,
                options.probe_period,
                probe_history,
                output_file=os.path.join(output_dir, "probe.json"),
            )
        )
    writers = [
        CommonMetricPrinter(options.max_iter),
        JSONWriter(os.path.join(output_dir, "metrics.json")),
    ]
    result.append(hooks.PeriodicWriter(writers, period=options.log_period))
    return result


def load_probe_history(output_dir: str) -> list[dict]:
    """The probe results of ``<output_dir>/probe.json`` ([] when absent)."""
    path = os.path.join(output_dir, "probe.json")
    if not os.path.isfile(path):
        return []
    with open(path) as file:
        return json.load(file)
