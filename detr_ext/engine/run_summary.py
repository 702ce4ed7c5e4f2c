"""The figures a finished train-and-evaluate run reports: the iterations its checkpoint was
trained for (:func:`checkpoint_iteration`) and its one-line summary (:func:`summary_line`), as
``tools/train_shapes_demo.py`` prints them."""

from __future__ import annotations

import math

import torch

__all__ = ["checkpoint_iteration", "summary_line"]


def checkpoint_iteration(weights: str) -> int | None:
    """Iterations trained for the checkpoint ``weights`` (``None`` if it does not say)."""
    checkpoint = torch.load(weights, map_location="cpu", weights_only=False)
    iteration = checkpoint.get("iteration") if isinstance(checkpoint, dict) else None
    return None if iteration is None else int(iteration) + 1


def summary_line(
    box_ap: float | None,
    iterations: int | None,
    train_seconds: float | None,
    wall_seconds: float | None = None,
    start_iter: int = 0,
) -> str:
    """``box AP = 41.2 after 2000 iterations in 12.1 min (training and its evaluation), 12.4 min
    in all`` (or what is known of it).

    A resumed run (``start_iter`` > 0: it began at that iteration) says how many of the
    iterations its time covers: ``after 2000 iterations (800 of them in this run, from
    iteration 1200) in 4.8 min ...``."""
    ap_text = "n/a" if box_ap is None or not math.isfinite(box_ap) else f"{box_ap:.1f}"
    iterations_text = "an unknown number of" if iterations is None else str(iterations)
    if train_seconds is None:
        return f"box AP = {ap_text} after {iterations_text} iterations (training skipped)"
    resumed = ""
    if start_iter > 0:
        done = "" if iterations is None else f"{iterations - start_iter} of them "
        resumed = f" ({done}in this run, from iteration {start_iter})"
    line = (
        f"box AP = {ap_text} after {iterations_text} iterations{resumed} in "
        f"{train_seconds / 60:.1f} min (training and its evaluation)"
    )
    if wall_seconds is not None:
        line += f", {wall_seconds / 60:.1f} min in all"
    return line
