"""The training data stream across ``--resume``: the train loader is built with a
:class:`~detr_ext.data.samplers.ResumableTrainingSampler`, every checkpoint records the
sampler's seed and how far the finished iterations read its stream (``"data_stream"``), and a
resumed run starts the stream there.

Without this (detectron2's ``TrainingSampler``), a resumed run starts the stream again: after
resuming at iteration ``k`` it trains on the images of iterations 0, 1, 2, ... once more,
in the same order when ``train.seed`` is fixed.

What is and is not continued:

- The indices continue exactly: a resumed run meets the images of the uninterrupted run, in
  the same order, also after a change of the number of processes (the position counts the
  indices of all ranks together). With ``aspect_ratio_grouping`` (the default) the partial
  groups waiting when the checkpoint was written are not restored, so a few images (fewer
  than 2 x the per-process batch size per process) are left out, as many images past the
  position that the grouping had already used are read again, and the grouping that follows
  may differ.
- Random augmentations and denoising noise continue with the generator states the
  checkpoint recorded (:mod:`~detr_ext.engine.random_states`): exactly, with ``num_workers=0``;
  data-loader workers are seeded afresh from the restored state.
- A training set whose size changed since the checkpoint starts a new stream, with a warning;
  so does a checkpoint without ``"data_stream"`` (written before detr_ext recorded it).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator
from typing import Any

import torch.utils.data as torchdata
from detectron2.config import instantiate
from detectron2.data.common import DatasetFromList
from omegaconf import DictConfig, OmegaConf

from ..config import accepts_argument
from ..data.samplers import ResumableTrainingSampler

__all__ = ["DataStreamState", "EmptyTrainingSetError", "build_train_loader"]

logger = logging.getLogger(__name__)

_UNSET = object()


def build_train_loader(cfg: DictConfig) -> tuple[Iterable, ResumableTrainingSampler | None]:
    """``instantiate(cfg.dataloader.train)``, with a :class:`ResumableTrainingSampler` over the
    dataset when the config leaves the sampler to the loader builder.

    That is the case when ``dataloader.train`` calls a builder taking ``dataset``, ``sampler``
    and ``total_batch_size`` (detectron2's ``build_detection_train_loader``) with no
    ``sampler`` set, and its dataset instantiates to a map-style dataset (a list of dicts, as
    ``get_detection_dataset_dicts`` gives). Otherwise (a sampler of the config's own, an
    iterable dataset, another builder) the loader is built as the config says and ``None`` is
    returned in place of the sampler: such a run restarts its stream when resumed.

    The dataset is instantiated once either way; the config is left as it was.

    Returns:
        ``(train_loader, sampler)``.
    """
    node = cfg.dataloader.train
    target = node.get("_target_", None) if isinstance(node, DictConfig) else None
    if (
        target is None
        or node.get("sampler", None) is not None
        or "dataset" not in node
        or "total_batch_size" not in node
        or not all(accepts_argument(target, name) for name in ("dataset", "sampler"))
    ):
        with _no_valid_data_explained(node):
            return instantiate(node), None
    with _no_valid_data_explained(node):
        dataset = instantiate(node.dataset)
    sampler = None
    if isinstance(dataset, list):
        dataset = DatasetFromList(dataset, copy=False)  # what the builder does with a list
    if not isinstance(dataset, torchdata.IterableDataset) and len(dataset) > 0:
        sampler = ResumableTrainingSampler(len(dataset))
    # Built from `node` itself (not a copy) so that interpolations such as
    # "${..test.num_workers}" resolve; the two entries are put back afterwards.
    saved = {key: node.get(key, _UNSET) for key in ("dataset", "sampler")}
    try:
        node.dataset = dataset
        node.sampler = sampler
        loader = instantiate(node)
    finally:
        for key, value in saved.items():
            if value is _UNSET:
                del node[key]
            else:
                node[key] = value
    return loader, sampler


class EmptyTrainingSetError(ValueError):
    """No image of the training set keeps an object after detectron2's ``filter_empty``."""


@contextlib.contextmanager
def _no_valid_data_explained(node: Any) -> Iterator[None]:
    # detectron2's get_detection_dataset_dicts asserts "No valid data found in <names>." when
    # filter_empty leaves no image: a bare AssertionError that says neither why nor what to do.
    try:
        yield
    except AssertionError as error:
        if not str(error).startswith("No valid data found"):
            raise
        names = (
            OmegaConf.select(node, "dataset.names", default=None)
            if isinstance(node, DictConfig)
            else None
        )
        raise EmptyTrainingSetError(
            f"the training set {names if names is not None else ''} has no image with an "
            "annotation (crowd regions do not count): get_detection_dataset_dicts' "
            "filter_empty=True leaves no image to train on. Expected a json with annotations "
            "(tools/check_dataset.py --config-file <config> lists what the datasets hold)"
        ) from error


class DataStreamState:
    """Checkpointable (``"data_stream"`` in a checkpoint) that records the train sampler's
    seed and stream position, and starts a resumed run's sampler there.

    The position after iteration ``i`` is the position the run started at plus
    ``(i + 1 - start_iter) * total_batch_size``: each iteration consumes ``total_batch_size``
    indices of the stream, all processes together, whether or not its step was applied.

    Args:
        sampler: the train loader's sampler (from :func:`build_train_loader`).
        total_batch_size: images per iteration, all processes together.
        trainer: the trainer whose ``iter`` / ``start_iter`` say how many iterations finished.
    """

    def __init__(self, sampler: ResumableTrainingSampler, total_batch_size: int, trainer: Any):
        if isinstance(total_batch_size, bool) or int(total_batch_size) != total_batch_size:
            raise ValueError(
                f"DataStreamState: expected an int total_batch_size, got {total_batch_size!r}"
            )
        if total_batch_size <= 0:
            raise ValueError(
                f"DataStreamState: expected total_batch_size > 0, got {total_batch_size!r}"
            )
        self.sampler = sampler
        self.total_batch_size = int(total_batch_size)
        self.trainer = trainer
        self.loaded = False

    def position(self) -> int:
        """Stream position after the trainer's current iteration (``trainer.iter``)."""
        finished = self.trainer.iter + 1 - self.trainer.start_iter
        return self.sampler.position + max(finished, 0) * self.total_batch_size

    def state_dict(self) -> dict[str, Any]:
        return {
            "seed": self.sampler.seed,
            "size": self.sampler.size,
            "shuffle": self.sampler.shuffle,
            "position": self.position(),
            "total_batch_size": self.total_batch_size,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Start the sampler where ``state`` says, unless the training set changed since.

        Raises:
            RuntimeError: the trainer already requested a batch (its loader's workers hold
                their copies of the sampler, so the new position would not reach them).
            ValueError: ``state`` is not a data-stream state.
        """
        if getattr(self.trainer, "_data_loader_iter_obj", None) is not None:
            raise RuntimeError(
                "DataStreamState.load_state_dict: the trainer already started reading the "
                "train loader; load the checkpoint before training starts"
            )
        missing = [key for key in ("seed", "size", "shuffle", "position") if key not in state]
        if missing:
            raise ValueError(
                f"DataStreamState.load_state_dict: expected a data-stream state with 'seed', "
                f"'size', 'shuffle' and 'position', missing {missing}"
            )
        size, shuffle = int(state["size"]), bool(state["shuffle"])
        if (size, shuffle) != (self.sampler.size, self.sampler.shuffle):
            logger.warning(
                "The checkpoint's training data stream was over %d images (shuffle=%s); the "
                "training set now has %d (shuffle=%s). The resumed run starts a new stream "
                "(seed %d) instead of continuing the checkpoint's.",
                size,
                shuffle,
                self.sampler.size,
                self.sampler.shuffle,
                self.sampler.seed,
            )
            return
        position = int(state["position"])
        self.sampler.start_at(position, seed=int(state["seed"]))
        self.loaded = True
        logger.info(
            "Continuing the training data stream of the checkpoint: index %d of its stream "
            "(epoch %.2f of %d images, seed %d).",
            position,
            position / size,
            size,
            self.sampler.seed,
        )
