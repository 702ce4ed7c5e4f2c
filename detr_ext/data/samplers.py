"""A training sampler that can start anywhere in its index stream, so that a resumed run
continues the stream where the checkpoint left it instead of starting it again.

detectron2's :class:`~detectron2.data.samplers.TrainingSampler` yields the infinite stream
``shuffle(range(size)) + shuffle(range(size)) + ...`` (one permutation per epoch, drawn from
its seed), rank ``r`` of ``W`` processes taking every ``W``-th index from ``r``. Each new run
starts at the first index: a run resumed at iteration 45,000 of 90,000 trains on the same
images, in the same order, as iterations 0, 1, 2, ... did, and never reaches the second half of
the epochs the uninterrupted run would have seen. :class:`ResumableTrainingSampler` yields the
same stream from any ``position`` (the number of indices, all ranks together, consumed before
it), and ``tools/train_net.py`` stores that position in every checkpoint
(:class:`detr_ext.engine.DataStreamState`).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import torch
from detectron2.data.samplers import TrainingSampler

__all__ = ["ResumableTrainingSampler"]


class ResumableTrainingSampler(TrainingSampler):
    """:class:`~detectron2.data.samplers.TrainingSampler` (same stream, same sharding between
    ranks) that starts at ``position`` of the stream: rank ``r`` yields ``stream[position + r]``,
    ``stream[position + r + W]``, ... Skipped epochs cost one permutation draw each, no data
    loading.

    Args:
        size: number of items of the dataset (> 0).
        shuffle: a new permutation every epoch (else ``range(size)`` repeated).
        seed: seed of the permutations, equal on every rank; ``None`` draws one shared by all
            ranks (detectron2's ``comm.shared_random_seed``, a collective call).
    """

    def __init__(self, size: int, shuffle: bool = True, seed: int | None = None) -> None:
        super().__init__(size, shuffle=shuffle, seed=seed)
        self._position = 0

    @property
    def size(self) -> int:
        return self._size

    @property
    def shuffle(self) -> bool:
        return self._shuffle

    @property
    def seed(self) -> int:
        return self._seed

    @property
    def position(self) -> int:
        """Index of the whole stream (all ranks together) at which iteration starts."""
        return self._position

    def start_at(self, position: int, seed: int | None = None) -> None:
        """Start the stream at ``position`` (and, if given, draw it from ``seed``) for every
        iterator created from now on; data-loader workers take their copy of the sampler when
        the loader's iterator is created, so call this before the first batch is requested.

        Raises:
            ValueError: ``position`` is not an int >= 0, or ``seed`` not an int.
        """
        if isinstance(position, bool) or not isinstance(position, int) or position < 0:
            raise ValueError(
                f"ResumableTrainingSampler.start_at: expected a position >= 0 (an int), got "
                f"{position!r}"
            )
        if seed is not None:
            if isinstance(seed, bool) or not isinstance(seed, int):
                raise ValueError(
                    f"ResumableTrainingSampler.start_at: expected an int seed, got {seed!r}"
                )
            self._seed = seed
        self._position = position

    def __iter__(self) -> Iterator[int]:
        yield from itertools.islice(
            self._indices_from(self._position + self._rank), None, None, self._world_size
        )

    def _indices_from(self, position: int) -> Iterator[int]:
        """``stream[position:]``, where ``stream`` is what ``TrainingSampler`` yields before
        sharding (``_infinite_indices``), without producing the indices before ``position``."""
        generator = torch.Generator()
        generator.manual_seed(self._seed)
        epoch, offset = divmod(position, self._size)
        if self._shuffle:
            for _ in range(epoch):  # advance the generator as the skipped epochs did
                torch.randperm(self._size, generator=generator)
        while True:
            if self._shuffle:
                indices = torch.randperm(self._size, generator=generator).tolist()
            else:
                indices = list(range(self._size))
            yield from indices[offset:]
            offset = 0
