"""The options of a DINO self-distillation pretraining run, with their defaults, and
``key=value`` overrides of them (``tools/pretrain_backbone.py``)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = [
    "ARCHITECTURE_OPTIONS",
    "TRAINING_OPTIONS",
    "PretrainOptions",
    "apply_option_overrides",
]

# Options that change the shapes of the saved state (head, loss center, optimizer moments):
# a checkpoint cannot be resumed with other values.
ARCHITECTURE_OPTIONS = ("out_dim", "hidden_dim", "bottleneck_dim", "head_bn", "in_feature")
# Options that change what the remaining iterations train (schedules, loss, crops, seed); the
# others (periods, workers, the probe's settings) change only the bookkeeping.
TRAINING_OPTIONS = (
    "max_iter", "batch_size", "lr", "min_lr", "warmup_fraction", "weight_decay",
    "weight_decay_end", "teacher_momentum", "teacher_momentum_end", "clip_grad",
    "freeze_last_layer_iters", "student_temp", "teacher_temp", "warmup_teacher_temp",
    "warmup_teacher_temp_fraction", "center_momentum", "global_size", "local_size", "num_local",
    "seed",
)  # fmt: skip

_POSITIVE_INTS = (
    "max_iter", "batch_size", "out_dim", "hidden_dim", "bottleneck_dim", "global_size",
    "local_size", "checkpoint_period", "log_period", "probe_crop_size", "knn_k",
)  # fmt: skip
_NON_NEGATIVE_INTS = ("freeze_last_layer_iters", "num_local", "num_workers", "probe_period")
_POSITIVE_FLOATS = ("lr", "student_temp", "teacher_temp", "warmup_teacher_temp", "knn_temperature")
_NON_NEGATIVE_FLOATS = ("min_lr", "weight_decay", "weight_decay_end", "clip_grad")
_UNIT_INTERVAL = (
    "warmup_fraction", "warmup_teacher_temp_fraction", "teacher_momentum",
    "teacher_momentum_end", "center_momentum",
)  # fmt: skip


@dataclass
class PretrainOptions:
    """What a pretraining run does; defaults follow DINO's ResNet recipe, scaled to small
    images and short runs. Iteration counts are absolute; fractions are of ``max_iter``.

    Attributes:
        max_iter, batch_size: length of the run and images per step.
        lr, min_lr: AdamW learning rate: linear warm-up over ``warmup_fraction`` of the run
            from 0 to ``lr``, then cosine decay to ``min_lr``.
        weight_decay, weight_decay_end: cosine schedule of the weight decay (weights only; no
            decay on biases and normalization parameters).
        teacher_momentum, teacher_momentum_end: cosine schedule of the EMA momentum.
        clip_grad: max L2 norm of the student's gradients (0: no clipping).
        freeze_last_layer_iters: the head's last layer gets no update for these first steps.
        student_temp, teacher_temp, warmup_teacher_temp, warmup_teacher_temp_fraction,
            center_momentum: ``DINOLoss``'s temperatures (teacher warm-up over the given
            fraction of the run) and centering momentum.
        out_dim, hidden_dim, bottleneck_dim: ``DINOHead`` sizes.
        head_bn: 1 puts BatchNorm1d in the head's MLP (``DINOHead(use_bn=True)``), 0 not.
        in_feature: the backbone output that is pooled and fed to the head.
        global_size, local_size, num_local: multi-crop sizes and number of local crops.
        num_workers: data-loader processes.
        checkpoint_period, log_period: iterations between checkpoints / progress lines.
        probe_period: iterations between k-NN probes (0: only before and after training).
        probe_crop_size, knn_k, knn_temperature: the probe's crop size and k-NN parameters.
        seed: seed of the initialisation, the crops and the data order; negative: a seed
            drawn for the run (logged, and recorded in its checkpoints).
    """

    max_iter: int = 300
    batch_size: int = 16
    lr: float = 5e-4
    min_lr: float = 1e-6
    warmup_fraction: float = 0.1
    weight_decay: float = 0.04
    weight_decay_end: float = 0.4
    teacher_momentum: float = 0.99
    teacher_momentum_end: float = 1.0
    clip_grad: float = 3.0
    freeze_last_layer_iters: int = 10
    student_temp: float = 0.1
    teacher_temp: float = 0.04
    warmup_teacher_temp: float = 0.04
    warmup_teacher_temp_fraction: float = 0.1
    center_momentum: float = 0.9
    out_dim: int = 1024
    hidden_dim: int = 512
    bottleneck_dim: int = 128
    head_bn: int = 0
    in_feature: str = "res5"
    global_size: int = 128
    local_size: int = 64
    num_local: int = 4
    num_workers: int = 0
    checkpoint_period: int = 100
    log_period: int = 10
    probe_period: int = 100
    probe_crop_size: int = 64
    knn_k: int = 20
    knn_temperature: float = 0.07
    seed: int = 0

    def validate(self) -> PretrainOptions:
        """Check every option's range; return ``self``.

        Raises:
            ValueError: naming each bad option, the expected range and the value got.
        """
        problems = []

        def bad(key: str, expected: str) -> None:
            problems.append(f"{key}: expected {expected}, got {getattr(self, key)!r}")

        for field in dataclasses.fields(self):
            value, kind = getattr(self, field.name), type(field.default)
            if isinstance(value, bool) or not isinstance(value, kind):
                if not (kind is float and isinstance(value, int)):
                    bad(field.name, f"a {kind.__name__}")
        if problems:
            raise ValueError("invalid pretraining options:\n  " + "\n  ".join(problems))
        for key in _POSITIVE_INTS:
            if getattr(self, key) < 1:
                bad(key, "a positive integer")
        for key in _NON_NEGATIVE_INTS:
            if getattr(self, key) < 0:
                bad(key, "an integer >= 0")
        for key in _POSITIVE_FLOATS:
            if not (math.isfinite(getattr(self, key)) and getattr(self, key) > 0):
                bad(key, "a finite number > 0")
        for key in _NON_NEGATIVE_FLOATS:
            if not (math.isfinite(getattr(self, key)) and getattr(self, key) >= 0):
                bad(
                    key,
                    "a finite number >= 0" + (" (0: no clipping)" if key == "clip_grad" else ""),
                )
        for key in _UNIT_INTERVAL:
            if not 0.0 <= getattr(self, key) <= 1.0:
                bad(key, "a number in [0, 1]")
        if self.head_bn not in (0, 1):
            bad("head_bn", "0 or 1")
        if not self.in_feature:
            bad("in_feature", "the name of a backbone output, e.g. 'res5'")
        if len(problems) == 1:
            raise ValueError(f"invalid pretraining option {problems[0]}")
        if problems:
            raise ValueError("invalid pretraining options:\n  " + "\n  ".join(problems))
        return self

    @property
    def warmup_iters(self) -> int:
        return int(round(self.warmup_fraction * self.max_iter))

    @property
    def warmup_teacher_temp_iters(self) -> int:
        return int(round(self.warmup_teacher_temp_fraction * self.max_iter))


def apply_option_overrides(options: PretrainOptions, overrides: Iterable[str]) -> PretrainOptions:
    """A copy of ``options`` with ``key=value`` strings applied, each value converted to the
    field's type (``int``, ``float``, ``str``).

    Raises:
        ValueError: an item is not ``key=value``, names no option, or its value does not parse.
    """
    fields = {field.name: field for field in dataclasses.fields(options)}
    changes: dict[str, object] = {}
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep:
            raise ValueError(f"pretraining option: expected key=value, got {item!r}")
        if key not in fields:
            raise ValueError(
                f"pretraining option: unknown key {key!r}; expected one of {sorted(fields)}"
            )
        kind = type(getattr(options, key))
        try:
            changes[key] = kind(text)
        except ValueError as error:
            raise ValueError(
                f"pretraining option {key}: expected a {kind.__name__}, got {text!r}"
            ) from error
    return dataclasses.replace(options, **changes)
