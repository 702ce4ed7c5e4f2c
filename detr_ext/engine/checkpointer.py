"""A :class:`~detectron2.checkpoint.DetectionCheckpointer` that never writes a checkpoint a run
cannot resume from.

Two guarantees on top of detectron2's checkpointer:

- **Finite weights only.** Before writing, the model's state dict and the EMA state (the
  ``ema`` checkpointable) are checked for NaN / inf in floating-point tensors. If any is found,
  nothing is written, ``last_checkpoint`` keeps naming the previous (good) checkpoint and
  :class:`NonFiniteCheckpointError` is raised, naming the first offending keys. Raising rather
  than skipping the save: a model whose weights are already non-finite cannot train on (every
  later loss is NaN), and a silently skipped save would also confuse
  ``PeriodicCheckpointer``'s ``max_to_keep`` bookkeeping, which re-reads ``last_checkpoint``.
- **Atomic files.** The ``.pth`` file and ``last_checkpoint`` are written to a hidden temporary
  file in the same directory, flushed to disk, then renamed over the final name with
  :func:`os.replace` (atomic on POSIX and Windows within one file system). A process killed
  while saving leaves either the previous file or the complete new one under the final name;
  at worst a hidden ``.<name>.pth.<random>.tmp`` file stays behind, which is not a ``.pth``
  file and is never picked up by ``get_all_checkpoint_files`` or ``--resume``. A save that
  fails with an exception (disk full, a pickling error) removes its temporary file.

Save directories given as URLs (``manifold://``, ``s3://`` ...) go through the base class's
``PathManager`` unchanged, without the atomicity guarantee.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.engine import hooks
from fvcore.common.checkpoint import Checkpointer

from ..checkpoint.loading import check_caffe2_weights_fit, check_fits_some_key
from ..checkpoint.norm_counters import DropFrozenNormCountersMixin
from ..checkpoint.reading import NamedReadErrorsMixin
from ..utils.file_io import atomic_write
from .output_dir import LAST_CHECKPOINT_FILE
from .resume import ResumeError

__all__ = [
    "NonFiniteCheckpointError",
    "PeriodicCheckpointer",
    "SafeCheckpointer",
    "describe_last_checkpoint",
    "nonfinite_keys",
]


class NonFiniteCheckpointError(FloatingPointError):
    """Raised instead of writing a checkpoint whose weights contain NaN or inf."""


def _floating_tensors(state: Any, prefix: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    """``(dotted key, tensor)`` for every floating-point tensor in a nested state dict."""
    if isinstance(state, torch.Tensor):
        if state.is_floating_point() or state.is_complex():
            yield prefix, state
    elif isinstance(state, Mapping):
        for key, value in state.items():
            yield from _floating_tensors(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(state, (list, tuple)):
        for index, value in enumerate(state):
            yield from _floating_tensors(value, f"{prefix}.{index}" if prefix else str(index))


@torch.no_grad()
def nonfinite_keys(state: Any, limit: int | None = None) -> list[str]:
    """Keys of the floating-point tensors in ``state`` (a tensor or a nested dict / list of
    tensors, e.g. a ``state_dict()``) that hold a NaN or an inf, in iteration order.

    Args:
        state: the (nested) state to check; non-tensor leaves are ignored.
        limit: stop after this many keys (``None``: all of them).
    """
    named = list(_floating_tensors(state))
    if not named:
        return []
    # One device-to-host copy per device, not one per tensor.
    by_device: dict[torch.device, list[int]] = {}
    for index, (_, tensor) in enumerate(named):
        by_device.setdefault(tensor.device, []).append(index)
    finite = [True] * len(named)
    for indices in by_device.values():
        flags = torch.stack([torch.isfinite(named[i][1]).all() for i in indices]).cpu()
        for index, flag in zip(indices, flags.tolist(), strict=True):
            finite[index] = flag
    bad = [name for (name, _), ok in zip(named, finite, strict=True) if not ok]
    return bad if limit is None else bad[:limit]


def describe_last_checkpoint(checkpointer: Checkpointer | None) -> str:
    """The path that ``checkpointer``'s ``last_checkpoint`` file names (what ``--resume``
    loads), or a sentence saying that there is none, for error messages."""
    if checkpointer is None or not checkpointer.save_dir:
        return "unknown (no checkpointer with a save directory)"
    if checkpointer.has_checkpoint():
        path = checkpointer.get_checkpoint_file()
        if path:
            return path
    return (
        f"none yet (no '{LAST_CHECKPOINT_FILE}' in {checkpointer.save_dir}: --resume would "
        "start from train.init_checkpoint)"
    )


def _is_local_dir(path: str) -> bool:
    return "://" not in path


class SafeCheckpointer(NamedReadErrorsMixin, DropFrozenNormCountersMixin, DetectionCheckpointer):
    """``DetectionCheckpointer`` that refuses non-finite weights and writes files atomically.

    Loading (``load``, ``resume_or_load``, detectron2 / pycls / Detectron1 formats) is
    detectron2's, except that a file it cannot read (truncated, corrupt) raises
    :class:`~detr_ext.checkpoint.UnreadableCheckpointError`, which names the file, the other
    checkpoints next to it and how to resume from one, and BatchNorm step counters of layers
    the model keeps frozen are ignored (:mod:`detr_ext.checkpoint.norm_counters`).

    Args:
        model, save_dir, save_to_disk, checkpointables: as in ``DetectionCheckpointer``.
        checked_keys: the entries of the saved dict that must hold finite floating-point
            tensors: ``"model"`` (the model's state dict) and the names of checkpointables
            holding weights. Optimizer and scheduler states are not checked: they are not
            weights, and the trainer keeps non-finite gradients out of them.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        save_dir: str = "",
        *,
        save_to_disk: bool | None = None,
        checked_keys: tuple[str, ...] = ("model", "ema"),
        **checkpointables: Any,
    ) -> None:
        super().__init__(model, save_dir, save_to_disk=save_to_disk, **checkpointables)
        self.checked_keys = tuple(checked_keys)
        self._resuming = False
        self._loading = ""

    def resume_or_load(self, path: str, *, resume: bool = True) -> dict[str, Any]:
        """detectron2's ``resume_or_load``, stricter about what the model receives:

        - resuming (``resume`` and a last checkpoint in ``save_dir``): the checkpoint must fit
          the model built from the config in every tensor shape, else :class:`ResumeError`
          (a changed ``model.num_classes`` used to load, then crash in the optimizer step);
        - loading ``path`` (``train.init_checkpoint``): tensors of another shape are skipped
          with detectron2's warning (fine-tuning a new head), but a checkpoint that fills
          none of the model's tensors is a
          :class:`~detr_ext.checkpoint.CheckpointMismatchError` (it used to train from
          scratch after a long list of missing keys).
        """
        self._resuming = bool(resume and self.has_checkpoint())
        self._loading = self.get_checkpoint_file() if self._resuming else path
        try:
            return super().resume_or_load(path, resume=resume)
        finally:
            self._resuming, self._loading = False, ""

    def _load_model(self, checkpoint: Any) -> Any:
        if self._resuming:
            # Checkpointables that check the run before anything else (pretraining's options:
            # their message names the option, not the tensors it shaped). Popped, so fvcore's
            # loop after the model does not load them twice.
            for name, obj in self.checkpointables.items():
                if getattr(obj, "load_before_model", False) and name in checkpoint:
                    obj.load_state_dict(checkpoint.pop(name))
        if not self._resuming and self._loading:
            check_caffe2_weights_fit(self.model, checkpoint, "train.init_checkpoint", self._loading)
        incompatible = super()._load_model(checkpoint)
        if incompatible is None:
            return None
        if self._resuming and incompatible.incorrect_shapes:
            shown = [
                f"{key}: {list(got)} vs {list(want)}"
                for key, got, want in incompatible.incorrect_shapes[:8]
            ]
            more = len(incompatible.incorrect_shapes) - len(shown)
            raise ResumeError(
                f"--resume: {self._loading} does not fit the model built from the config: "
                f"{len(incompatible.incorrect_shapes)} tensor(s) have another shape (checkpoint "
                f"vs model): {'; '.join(shown)}{f' ... and {more} more' if more > 0 else ''}. "
                "--resume continues the same run with the same model (e.g. the same "
                "model.num_classes). To train a new head from these weights, start a new run "
                "(another train.output_dir) with train.init_checkpoint="
                f"{self._loading}."
            )
        if not self._resuming and self._loading:
            check_fits_some_key(self.model, incompatible, "train.init_checkpoint", self._loading)
        return incompatible

    def save(self, name: str, **kwargs: Any) -> None:
        """Write ``<save_dir>/<name>.pth`` atomically and tag it as the last checkpoint.

        Raises:
            NonFiniteCheckpointError: a checked entry holds NaN / inf; nothing is written.
        """
        if not self.save_dir or not self.save_to_disk:
            return

        data: dict[str, Any] = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)

        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        assert os.path.basename(save_file) == basename, basename
        self._check_finite(data, save_file)

        self.logger.info("Saving checkpoint to %s", save_file)
        if _is_local_dir(self.save_dir):
            atomic_write(save_file, lambda file: torch.save(data, file))
        else:
            with self.path_manager.open(save_file, "wb") as file:
                torch.save(data, file)
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        """Record ``last_filename_basename`` in ``<save_dir>/last_checkpoint``, atomically."""
        save_file = os.path.join(self.save_dir, LAST_CHECKPOINT_FILE)
        if not _is_local_dir(self.save_dir):
            super().tag_last_checkpoint(last_filename_basename)
            return
        atomic_write(save_file, lambda file: file.write(last_filename_basename.encode()))

    def _check_finite(self, data: Mapping[str, Any], save_file: str) -> None:
        bad: list[str] = []
        for key in self.checked_keys:
            if key in data:
                bad += [f"{key}: {name}" for name in nonfinite_keys(data[key], limit=10)]
        if not bad:
            return
        iteration = data.get("iteration")
        at = f" at iteration {iteration}" if iteration is not None else ""
        raise NonFiniteCheckpointError(
            f"Refusing to save {save_file}{at}: the weights contain NaN or inf (first "
            f"offending entries: {', '.join(bad[:10])}). Training has probably diverged. "
            f"Nothing was written; the last good checkpoint is still "
            f"{describe_last_checkpoint(self)} (resume from it with --resume, e.g. with a "
            "lower learning rate or gradient clipping)."
        )


class PeriodicCheckpointer(hooks.PeriodicCheckpointer):
    """detectron2's periodic checkpointing hook, with its options checked up front and
    ``max_to_keep`` honoured across ``--resume``.

    detectron2 remembers the checkpoints it may delete in memory only, so every resumed run
    started counting afresh and the checkpoints of the runs before it were never deleted (a
    run resumed five times kept up to 6 x ``max_to_keep`` files). Here the periodic
    checkpoints already in the output folder from before the resumed iteration count too,
    oldest first; after each save the oldest are deleted until ``max_to_keep`` remain
    (``model_final.pth`` is never deleted, nor are files of other names).

    Args:
        checkpointer: the run's checkpointer (its ``save_dir`` is the output folder).
        period: save every ``period`` iterations, a positive int.
        max_to_keep: how many periodic checkpoints to keep, a positive int, or ``None`` for all.
        file_prefix, max_iter: as for detectron2's hook.
    """

    def __init__(
        self,
        checkpointer: DetectionCheckpointer,
        period: int,
        max_to_keep: int | None = None,
        file_prefix: str = "model",
        max_iter: int | None = None,
    ) -> None:
        if isinstance(period, bool) or not isinstance(period, int) or period < 1:
            raise ValueError(
                f"train.checkpointer.period: expected a positive number of iterations, got "
                f"{period!r}"
            )
        if max_to_keep is not None and (
            isinstance(max_to_keep, bool) or not isinstance(max_to_keep, int) or max_to_keep < 1
        ):
            raise ValueError(
                "train.checkpointer.max_to_keep: expected a positive number of checkpoints, or "
                f"None to keep them all, got {max_to_keep!r}"
            )
        super().__init__(checkpointer, period, max_iter, max_to_keep, file_prefix)

    def before_train(self) -> None:
        super().before_train()
        save_dir = self.checkpointer.save_dir
        if self.max_to_keep is None or not save_dir or not _is_local_dir(save_dir):
            return
        pattern = re.compile(rf"{re.escape(self.file_prefix)}_(\d{{7}})\.pth")
        earlier = []
        for name in os.listdir(save_dir) if os.path.isdir(save_dir) else []:
            match = pattern.fullmatch(name)
            # Later ones (a run resumed from an older checkpoint) are written over as it
            # reaches them, and counted then.
            if match and int(match.group(1)) < self.trainer.start_iter:
                earlier.append((int(match.group(1)), os.path.join(save_dir, name)))
        self.recent_checkpoints = [path for _, path in sorted(earlier)]

    def step(self, iteration: int, **kwargs: Any) -> None:
        super().step(iteration, **kwargs)
        if self.max_to_keep is None:
            return
        final = f"{self.file_prefix}_final.pth"
        while len(self.recent_checkpoints) > self.max_to_keep:
            path = self.recent_checkpoints.pop(0)
            if self.path_manager.exists(path) and not path.endswith(final):
                self.path_manager.rm(path)
