"""The random generators across ``--resume``: every checkpoint records each process's generator
states (torch's CPU and CUDA generators, numpy's, Python's ``random``), and a resumed run puts
them back before its first step, so that random augmentations drawn in the training process
and DINO's denoising noise continue where the checkpoint left them instead of replaying those
of iteration 0 (every process is seeded with ``train.seed + rank`` at start-up).

- With the training loader's ``num_workers=0`` and the same number of processes, a resumed run
  is bitwise the uninterrupted run (tested with 1 and 2 processes).
- Data-loader worker processes hold their generators themselves: they are seeded when the
  loader's iterator starts, from the main process's generator, so after a resume they start
  from the restored state: new, deterministic draws, not those of iteration 0 again, but not
  the uninterrupted run's either.
- A process the checkpoint has no state for (more processes than when it was written, or a
  checkpoint without ``"random_states"``) is seeded from ``(train.seed + rank, iteration)``.
"""

from __future__ import annotations

import logging
import random
from typing import Any

import numpy as np
import torch
from detectron2.engine import HookBase
from detectron2.utils import comm
from detectron2.utils.env import seed_all_rng

__all__ = [
    "GatherRandomStatesHook",
    "RandomStates",
    "capture_rng_states",
    "restore_rng_states",
    "restore_or_reseed",
    "resume_seed",
]

logger = logging.getLogger(__name__)


def capture_rng_states(loader_generator: torch.Generator | None = None) -> dict[str, Any]:
    """The states of torch's CPU (and, once initialised, current CUDA) generator, numpy's,
    Python's ``random`` and, if given, a data loader's generator; tensors and plain values
    only, so that checkpoints load with ``weights_only=True``."""
    kind, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    version, python_state, gauss_next = random.getstate()
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss],
        "numpy_gaussian": float(cached_gaussian),
        "python": [version, torch.tensor(python_state, dtype=torch.int64), gauss_next],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state()
    if loader_generator is not None:
        states["loader"] = loader_generator.get_state()
    return states


def restore_rng_states(
    states: dict[str, Any], loader_generator: torch.Generator | None = None
) -> None:
    """Set the generators back to ``states`` (from :func:`capture_rng_states`)."""
    torch.set_rng_state(states["torch"])
    kind, keys, position, has_gauss = states["numpy"]
    keys = keys.numpy().astype(np.uint32)
    np.random.set_state((kind, keys, position, has_gauss, states["numpy_gaussian"]))
    version, python_state, gauss_next = states["python"]
    random.setstate((version, tuple(python_state.tolist()), gauss_next))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state(states["cuda"])
    if loader_generator is not None and "loader" in states:
        loader_generator.set_state(states["loader"])


def resume_seed(seed: int, iteration: int) -> int:
    """A seed for a run resumed at ``iteration`` without saved generator states: a fixed
    function of ``(seed, iteration)``, different from ``seed`` for every ``iteration > 0``."""
    return (seed * 1_000_003 + iteration) % 2**31


def restore_or_reseed(
    states: dict[str, Any] | None,
    seed: int,
    iteration: int,
    loader_generator: torch.Generator | None = None,
) -> int | None:
    """Put the generators back to ``states`` (:func:`capture_rng_states`); without states,
    seed them (and ``loader_generator``) with :func:`resume_seed` ``(seed, iteration)`` and
    return that seed, for the caller to say so. Returns None when states were restored."""
    if states is not None:
        restore_rng_states(states, loader_generator)
        return None
    new_seed = resume_seed(seed, iteration)
    seed_all_rng(new_seed)
    if loader_generator is not None:
        loader_generator.manual_seed(new_seed)
    return new_seed


class RandomStates:
    """Checkpointable ``"random_states"``: the generator states of every process at the last
    :meth:`gather` (the :class:`GatherRandomStatesHook` calls it on all processes just before
    the periodic checkpointer saves, which only the main process does).

    Args:
        seed: the run's ``train.seed`` (process ``rank`` was seeded with ``seed + rank``).
    """

    def __init__(self, seed: int | None) -> None:
        self.seed = 0 if seed is None else int(seed)
        self.gathered: list[dict[str, Any]] | None = None
        self.loaded: list[dict[str, Any]] | None = None

    def gather(self) -> None:
        """Collect every process's states (a collective: all processes call it)."""
        self.gathered = comm.all_gather(capture_rng_states())

    def state_dict(self) -> dict[str, Any]:
        return {"per_process": self.gathered or [capture_rng_states()]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.loaded = list(state.get("per_process", []))

    def restore(self, iteration: int) -> None:
        """Put this process's generators where the checkpoint left them, or seed them from
        ``(seed + rank, iteration)`` when it has none for this process. Call it just before
        the resumed run's first step."""
        rank = comm.get_rank()
        world_size = comm.get_world_size()
        if rank == 0 and self.loaded and len(self.loaded) < world_size:
            # Said here too: the other processes' warnings reach only their log.txt.rank<N>.
            first, last = len(self.loaded), world_size - 1
            logger.warning(
                "--resume: the checkpoint holds random-generator states for %d process(es), "
                "this run has %d: process(es) %s are seeded afresh (see log.txt.rank<N>).",
                len(self.loaded),
                world_size,
                first if first == last else f"{first}-{last}",
            )
        states = self.loaded[rank] if self.loaded and rank < len(self.loaded) else None
        seed = restore_or_reseed(states, self.seed + rank, iteration)
        if seed is None:
            return
        logger.warning(
            "--resume: the checkpoint holds no random-generator states for process %d (%s); "
            "seeding them with %d, from train.seed + rank and iteration %d, so random "
            "augmentations and noise differ from an uninterrupted run's.",
            rank,
            "written before detr_ext recorded them" if not self.loaded else "more processes now",
            seed,
            iteration,
        )


class GatherRandomStatesHook(HookBase):
    """On every process, gathers the generator states into ``states`` after each step at which
    the periodic checkpointer (registered after this hook) saves: ``(iter + 1) % period == 0``
    and the last iteration."""

    def __init__(self, states: RandomStates, period: int, max_iter: int) -> None:
        self.states = states
        self.period = int(period)
        self.max_iter = int(max_iter)

    def after_step(self) -> None:
        iteration = self.trainer.iter
        if (iteration + 1) % self.period == 0 or iteration >= self.max_iter - 1:
            self.states.gather()
