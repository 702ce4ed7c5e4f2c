"""What a pretraining checkpoint records beyond the weights, and what ``--resume`` does with it.

Each checkpoint holds a ``"pretrain_run"`` entry (:class:`PretrainRunState`): the run's
:class:`~detr_ext.pretrain.options.PretrainOptions` and the random generators' states after the
saved iteration (torch's CPU generator, numpy's, Python's ``random``, and the data loader's own
generator, which seeds its worker processes). On ``--resume``:

- options that shape the saved state (:data:`ARCHITECTURE_OPTIONS`) must be unchanged, else
  :class:`~detr_ext.engine.resume.ResumeError` names each, ``old -> new``, before any
  optimizer state is loaded; changed training options (:data:`TRAINING_OPTIONS`: schedules,
  loss, crops) are applied with a warning naming each; the rest are logged;
- the generators are set back to the saved states just before training, so with
  ``num_workers=0`` the crops of the resumed run are those of an uninterrupted run and the
  result is bitwise the same. Data-loader workers (``num_workers > 0``) hold their generators
  in their own processes: a resumed run's workers are seeded afresh from the restored loader
  generator, deterministically, but their crops differ from the uninterrupted run's;
- a checkpoint without the entry (written before it existed) cannot be checked; the generators
  are then seeded with :func:`~detr_ext.engine.random_states.resume_seed`
  ``(seed, start_iter)``, so the resumed run draws new crops rather than replaying those of
  iteration 0.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import torch

from ..engine.random_states import capture_rng_states, restore_or_reseed
from ..engine.resume import ResumeError
from .options import ARCHITECTURE_OPTIONS, TRAINING_OPTIONS, PretrainOptions

__all__ = ["PretrainRunState", "check_resume_end", "compare_options"]

logger = logging.getLogger(__name__)


def compare_options(saved: dict[str, Any], options: PretrainOptions) -> tuple[list, list, list]:
    """``(architecture, training, other)`` lines ``"key: old -> new"`` for the options of
    ``options`` that differ from ``saved`` (a checkpoint's ``dataclasses.asdict``); keys the
    checkpoint lacks are not compared."""
    architecture, training, other = [], [], []
    for key, new in dataclasses.asdict(options).items():
        if key not in saved or saved[key] == new:
            continue
        line = f"{key}: {saved[key]!r} -> {new!r}"
        if key in ARCHITECTURE_OPTIONS:
            architecture.append(line)
        elif key in TRAINING_OPTIONS:
            training.append(line)
        else:
            other.append(line)
    return architecture, training, other


class PretrainRunState:
    """Checkpointable ``"pretrain_run"``: the options and the random generators' states.

    Loading it (``--resume``) checks the checkpoint's options against ``options`` (see the
    module's notes) and keeps the generator states for :meth:`restore_rng`.

    Args:
        options: this run's options (the trainer's object).
        loader_generator: the data loader's generator (``DataLoader(generator=...)``).
        seed_was_drawn: ``options.seed`` was drawn for this run (``seed=-1``): on resume it
            is replaced, in place, by the checkpoint's seed instead of counting as a change.
    """

    # Loaded before the model on --resume (SafeCheckpointer): other model options are named as
    # options, before the model's tensors of other shapes are.
    load_before_model = True

    def __init__(
        self,
        options: PretrainOptions,
        loader_generator: torch.Generator | None = None,
        seed_was_drawn: bool = False,
    ) -> None:
        self.options = options
        self.loader_generator = loader_generator
        self.seed_was_drawn = seed_was_drawn
        self.saved_options: dict[str, Any] | None = None
        self.rng_states: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        return {
            "options": dataclasses.asdict(self.options),
            "rng": capture_rng_states(self.loader_generator),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.saved_options = dict(state.get("options", {}))
        self.rng_states = state.get("rng")
        if self.seed_was_drawn and "seed" in self.saved_options:
            self.options.seed = int(self.saved_options["seed"])
            logger.info(
                "--resume: seed=-1: continuing with the checkpoint's seed %d", self.options.seed
            )
        architecture, training, other = compare_options(self.saved_options, self.options)
        if architecture:
            raise ResumeError(
                "--resume: the checkpoint was trained with other model options (checkpoint -> "
                f"now): {'; '.join(architecture)}. Resume with the checkpoint's values, or "
                "choose another --output-dir to start a new run."
            )
        if training:
            logger.warning(
                "--resume: training options differ from the checkpoint's (checkpoint -> now): "
                "%s. The remaining iterations use the new values (schedules are functions of "
                "the iteration and max_iter, so a new max_iter re-stretches them).",
                "; ".join(training),
            )
        if other:
            logger.info("--resume: options changed since the checkpoint: %s", "; ".join(other))

    def restore_rng(self, start_iter: int) -> None:
        """Put the generators where the checkpoint left them, or (a checkpoint without them)
        seed them with ``resume_seed``. Call it just before training."""
        seed = restore_or_reseed(
            self.rng_states, self.options.seed, start_iter, self.loader_generator
        )
        if seed is None:
            return
        logger.warning(
            "--resume: the checkpoint holds no random-generator states; seeding them with %d "
            "(from seed=%d and start iteration %d), so the crops differ from an uninterrupted "
            "run's.",
            seed,
            self.options.seed,
            start_iter,
        )


def check_resume_end(checkpoint: str, start_iter: int, max_iter: int) -> None:
    """Refuse a checkpoint saved after ``start_iter`` iterations when ``max_iter`` is smaller
    (nothing would train and ``backbone.pth`` would be rewritten from a longer run)."""
    if start_iter > max_iter:
        raise ResumeError(
            f"--resume: {checkpoint} was saved after iteration {start_iter} (0-based "
            f"{start_iter - 1}), past max_iter={max_iter}. Give --max-iter {start_iter} or "
            "more to train on (the schedules then stretch to the new length), or choose "
            "another --output-dir to start a new run."
        )
    if start_iter == max_iter:
        logger.info(
            "--resume: %s is the end of training (max_iter=%d): nothing to train; exporting "
            "its backbone again.",
            checkpoint,
            max_iter,
        )
