"""A run's output folder: a new training run never replaces another run's checkpoints
unasked, and an evaluation leaves the run's ``config.yaml`` as it was (:func:`keep_run_config`).

detectron2 starts a run in ``train.output_dir`` whatever the directory holds: a second
``train_net.py`` without ``--resume`` (a rerun of the same command, a copied config that kept
the output directory) rewrites ``config.yaml``, appends to ``metrics.json`` and replaces
``model_final.pth`` and the periodic checkpoints as it saves its own, and ``last_checkpoint``
then names the new run's. :func:`check_new_run_output_dir` refuses, before anything is
written, a new run in a directory whose ``last_checkpoint`` names a checkpoint; ``--resume``
continues that run, another output directory keeps it, and ``--overwrite`` replaces it:
:func:`set_aside_earlier_run` first moves the earlier run's checkpoints, ``last_checkpoint``,
``metrics.json``, TensorBoard events, ``config.yaml`` and ``inference/`` into
``replaced_<UTC time>/`` inside the directory, so that nothing of it is resumed or mixed into
the new run's metrics, and nothing is deleted.
"""

from __future__ import annotations

import contextlib
import datetime
import glob
import os
from collections.abc import Iterator

from ..utils.file_io import atomic_write
from .resume import ResumeError

__all__ = [
    "OutputDirInUseError",
    "check_new_run_output_dir",
    "last_checkpoint_name",
    "keep_run_config",
    "set_aside_earlier_run",
]

LAST_CHECKPOINT_FILE = "last_checkpoint"  # fvcore's Checkpointer keeps this name


class OutputDirInUseError(ResumeError):
    """A new run was asked for in a directory that holds the checkpoints of another run."""


def last_checkpoint_name(output_dir: str | os.PathLike) -> str | None:
    """The checkpoint that ``output_dir``'s ``last_checkpoint`` file names (what ``--resume``
    would load), or ``None`` when there is no such file or it names nothing."""
    try:
        with open(os.path.join(output_dir, LAST_CHECKPOINT_FILE)) as f:
            name = f.read().strip()
    except (FileNotFoundError, NotADirectoryError):
        return None
    return name or None


def check_new_run_output_dir(output_dir: str | os.PathLike, overwrite: bool = False) -> str | None:
    """Before a new run (neither ``--resume`` nor an evaluation) writes to ``output_dir``.

    Args:
        output_dir: the run's ``train.output_dir``.
        overwrite: the user asked to replace the run there (``--overwrite``).

    Returns:
        the last checkpoint of the run being replaced (``overwrite``), else ``None``.

    Raises:
        OutputDirInUseError: ``output_dir`` holds a run's checkpoints and ``overwrite`` is off;
            the message names the last checkpoint and the three ways on.
    """
    last = last_checkpoint_name(output_dir)
    if last is None or overwrite:
        return last
    raise OutputDirInUseError(
        f"train.output_dir={os.fspath(output_dir)} holds the checkpoints of an earlier run "
        f"(last: {os.path.join(os.fspath(output_dir), last)}); a new run there would replace "
        "them, its config.yaml and its metrics. Expected --resume to continue that run, "
        "another output directory for a new one, or --overwrite to replace it."
    )


# What a run writes from its main process only (so that moving it cannot race another process):
# the files a new run would resume from or mix into its own.
_RUN_FILES = (
    LAST_CHECKPOINT_FILE,
    "model_*.pth",
    "metrics.json",
    "events.out.tfevents.*",
    "config.yaml",
    "inference",
)


def set_aside_earlier_run(output_dir: str | os.PathLike, extra: tuple[str, ...] = ()) -> str | None:
    """For ``--overwrite``, in the main process before the new run writes anything: move the
    earlier run's files (its checkpoints and ``last_checkpoint``, ``metrics.json``, TensorBoard
    events, ``config.yaml``, ``inference/``) into ``<output_dir>/replaced_<UTC time>/``. Logs
    are left to append to; ``extra`` adds glob patterns of a tool's own files (the pretraining's
    ``backbone.pth``). Returns the new folder, or ``None`` when there was nothing to move."""
    output_dir = os.fspath(output_dir)
    patterns = (*_RUN_FILES, *extra)
    found = sorted(
        {p for pattern in patterns for p in glob.glob(os.path.join(output_dir, pattern))}
    )
    if not found:
        return None
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
    folder = os.path.join(output_dir, f"replaced_{stamp}")
    suffix = 1
    while os.path.exists(folder):
        folder = os.path.join(output_dir, f"replaced_{stamp}_{suffix}")
        suffix += 1
    os.makedirs(folder)
    for path in found:
        os.replace(path, os.path.join(folder, os.path.basename(path)))
    return folder


@contextlib.contextmanager
def keep_run_config(output_dir: str | os.PathLike) -> Iterator[None]:
    """Around detectron2's ``default_setup`` of an evaluation (``--eval-only``) in a run's
    folder, in the main process: ``default_setup`` saves the evaluation's config as
    ``config.yaml``, which replaced the run's record (its ``max_iter``, schedule, overrides).
    With a ``config.yaml`` there, the run's file is put back and the evaluation's goes to
    ``inference/config.yaml``, next to the evaluation files."""
    path = os.path.join(os.fspath(output_dir), "config.yaml")
    original = None
    if os.path.isfile(path):
        with open(path, "rb") as f:
            original = f.read()
    yield
    if original is None:
        return
    if os.path.isfile(path):
        inference = os.path.join(os.fspath(output_dir), "inference")
        os.makedirs(inference, exist_ok=True)
        os.replace(path, os.path.join(inference, "config.yaml"))
    atomic_write(path, lambda f: f.write(original))
