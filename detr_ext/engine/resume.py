"""What ``--resume`` takes from the checkpoint and what from the config.

The checkpoint gives the *state*: weights, the EMA average and its update count, the
optimizer's moments, the iteration, the data-stream position. The config gives the
*hyperparameters*: detectron2 alone would restore the learning rate, weight decay (and betas,
momentum ...) of the checkpoint's optimizer param groups, and its LR scheduler would take the
checkpoint's base learning rates, so that ``--resume optimizer.lr=...`` (the usual answer to a
diverging run) was silently ignored. :func:`configured_hyperparameters` records the values of
the optimizer built from the config before loading, :func:`restore_configured_hyperparameters`
puts them back afterwards and says what changed.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

import torch

__all__ = [
    "CONFIGURED_KEYS",
    "ResumeError",
    "check_resume_iteration",
    "configured_hyperparameters",
    "restore_configured_hyperparameters",
]

logger = logging.getLogger(__name__)

# Param-group entries that come from the optimizer's config (torch's optimizers' arguments).
CONFIGURED_KEYS = (
    "lr",
    "weight_decay",
    "betas",
    "eps",
    "momentum",
    "dampening",
    "nesterov",
    "amsgrad",
    "maximize",
)


class ResumeError(ValueError):
    """``--resume`` cannot continue the checkpoint with this config."""


def configured_hyperparameters(optimizer: torch.optim.Optimizer) -> list[dict[str, Any]]:
    """The :data:`CONFIGURED_KEYS` of each param group, read before a checkpoint is loaded."""
    return [
        {key: group[key] for key in CONFIGURED_KEYS if key in group}
        for group in optimizer.param_groups
    ]


def restore_configured_hyperparameters(
    optimizer: torch.optim.Optimizer, configured: list[dict[str, Any]]
) -> list[str]:
    """Set the param groups' hyperparameters back to ``configured`` after a checkpoint's
    optimizer state was loaded, and the scheduler's base learning rate (``initial_lr``, which
    detectron2's ``LRMultiplier`` multiplies) to the configured ``lr``.

    Returns:
        one line per changed value, ``"lr: 0.0001 -> 5e-05 (all 2 parameter groups)"``
        (the checkpoint's value first); empty when the config and the checkpoint agree.
    """
    groups = optimizer.param_groups
    if len(groups) != len(configured):
        raise ResumeError(
            f"The checkpoint's optimizer has {len(groups)} parameter groups, the config's "
            f"{len(configured)}: the optimizer settings cannot be matched group by group."
        )
    changes: Counter[tuple[str, str, str]] = Counter()
    for group, values in zip(groups, configured, strict=True):
        for key, value in values.items():
            # The checkpoint's lr is the scheduled one of its last step; its base is initial_lr.
            loaded = group.get("initial_lr", group.get(key)) if key == "lr" else group.get(key)
            if _plain(loaded) != _plain(value):
                changes[(key, repr(_plain(loaded)), repr(_plain(value)))] += 1
            group[key] = value
        if "lr" in values:
            group["initial_lr"] = values["lr"]
    lines = []
    for (key, old, new), count in sorted(changes.items()):
        where = f"all {count}" if count == len(groups) else f"{count} of {len(groups)}"
        lines.append(f"{key}: {old} -> {new} ({where} parameter groups)")
    return lines


def check_resume_iteration(checkpoint: str, start_iter: int, max_iter: int) -> None:
    """Refuse to resume a checkpoint past the configured end of training.

    ``start_iter == max_iter`` (a finished run resumed again, e.g. a restarted cluster job)
    is allowed: nothing is trained and the final evaluation runs again.
    """
    if start_iter > max_iter:
        raise ResumeError(
            f"--resume: {checkpoint} was saved after iteration {start_iter} (0-based "
            f"{start_iter - 1}), past train.max_iter={max_iter}. Set train.max_iter above "
            f"{start_iter} to train on, use --eval-only with train.init_checkpoint={checkpoint} "
            "to evaluate it, or choose another train.output_dir to start a new run."
        )
    if start_iter == max_iter:
        logger.info(
            "--resume: %s is the end of training (train.max_iter=%d): nothing to train, "
            "evaluating it.",
            checkpoint,
            max_iter,
        )


def _plain(value: Any) -> Any:
    """Lists as tuples (``betas`` may come as either), tensors as numbers, for comparison."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    if isinstance(value, list):
        return tuple(_plain(item) for item in value)
    return value
