"""Schedules for self-supervised pretraining: linear warm-up, then a cosine from ``base`` to
``final``. DINO uses one for the learning rate, one for the weight decay and one for the
teacher momentum (0.996 -> 1.0)."""

from __future__ import annotations

import math
from collections.abc import Callable

__all__ = ["cosine_schedule"]


def cosine_schedule(
    base: float,
    final: float,
    total_iters: int,
    warmup_iters: int = 0,
    warmup_start: float = 0.0,
) -> Callable[[int], float]:
    """Return ``value(iteration)``: linear warm-up, then a half cosine from ``base`` to ``final``.

    - ``iteration < warmup_iters``: ``warmup_start + (base - warmup_start) * iteration /
      warmup_iters``;
    - ``warmup_iters <= iteration <= total_iters``: ``final + (base - final) * (1 + cos(pi *
      t)) / 2`` with ``t = (iteration - warmup_iters) / (total_iters - warmup_iters)``, so the
      value is ``base`` right after the warm-up and ``final`` at ``total_iters``;
    - ``iteration > total_iters``: ``final``.

    Args:
        base: value at the end of the warm-up (peak learning rate, starting momentum, ...).
        final: value at ``total_iters``.
        total_iters: length of the whole schedule (warm-up included), > 0.
        warmup_iters: iterations of linear warm-up, in ``[0, total_iters]``.
        warmup_start: value at iteration 0 when ``warmup_iters > 0``.
    """
    if total_iters <= 0:
        raise ValueError(f"cosine_schedule: expected total_iters > 0, got {total_iters}")
    if not 0 <= warmup_iters <= total_iters:
        raise ValueError(
            f"cosine_schedule: expected 0 <= warmup_iters <= total_iters={total_iters}, "
            f"got warmup_iters={warmup_iters}"
        )
    base, final, warmup_start = float(base), float(final), float(warmup_start)
    cosine_iters = total_iters - warmup_iters

    def value(iteration: int) -> float:
        if iteration < 0:
            raise ValueError(f"cosine_schedule: expected iteration >= 0, got {iteration}")
        if iteration < warmup_iters:
            return warmup_start + (base - warmup_start) * iteration / warmup_iters
        if cosine_iters == 0 or iteration >= total_iters:
            return final
        progress = (iteration - warmup_iters) / cosine_iters
        return final + 0.5 * (base - final) * (1.0 + math.cos(math.pi * progress))

    return value
