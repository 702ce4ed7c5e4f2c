"""The options of a DINO self-distillation pretraining run, with their defaults, and
``key=value`` overrides of them (``tools/pretrain_backbone.py``)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["PretrainOptions", "apply_option_overrides"]


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
        seed: seed of the initialisation and of the data order.
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
