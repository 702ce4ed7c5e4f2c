"""Learning-rate schedules for configs: ``default_X_scheduler`` builds the lazy step-decay
multiplier (with optional linear warmup) that ``configs/common/coco_schedule.py`` instantiates
for its ready 12 / 24 / 36 / 50 / 300 / 500-epoch schedules. A function, not a config value:
configs import it from here (``from detr_ext.config import default_X_scheduler``), which works
in a checkout and in an installed package alike."""

from __future__ import annotations

from detectron2.config import LazyCall as L
from detectron2.solver import WarmupParamScheduler
from fvcore.common.param_scheduler import MultiStepParamScheduler
from omegaconf import DictConfig

__all__ = ["default_X_scheduler", "default_coco_scheduler"]


def default_X_scheduler(
    epochs: float, decay_epochs: float, warmup_epochs: float = 0, base_steps: int = 7500
) -> DictConfig:
    """Multiplier 1.0 until ``decay_epochs``, then 0.1 until ``epochs`` (a lazy
    ``WarmupParamScheduler`` config; ``instantiate`` it for the scheduler).

    Args:
        epochs: length of the schedule, in epochs of ``base_steps`` iterations.
        decay_epochs: epoch at which the learning rate drops to 0.1x.
        warmup_epochs: linear warmup from 0.001x over this many epochs (may be fractional).
        base_steps: iterations per epoch (7500 = 120k images at batch 16).

    Raises:
        ValueError: not ``0 < decay_epochs < epochs``.
    """
    if not 0 < decay_epochs < epochs:
        raise ValueError(
            f"default_X_scheduler: expected 0 < decay_epochs < epochs, "
            f"got decay_epochs={decay_epochs}, epochs={epochs}"
        )
    total_steps = epochs * base_steps
    decay_steps = decay_epochs * base_steps
    warmup_steps = warmup_epochs * base_steps
    return L(WarmupParamScheduler)(
        scheduler=L(MultiStepParamScheduler)(
            values=[1.0, 0.1],
            milestones=[decay_steps, total_steps],
        ),
        warmup_length=warmup_steps / total_steps,
        warmup_method="linear",
        warmup_factor=0.001,
    )


# detrex's name for the same schedule.
default_coco_scheduler = default_X_scheduler
