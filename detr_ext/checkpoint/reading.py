"""Checkpoint files that cannot be read get an error naming the file and what to do.

A checkpoint cut short (a copy between machines interrupted, a full disk, a file written by
a tool without atomic writes) fails deep inside ``torch.load`` with messages such as
``OSError: [Errno 22] Invalid argument`` or "PytorchStreamReader failed reading zip archive",
without the file's name. :class:`NamedReadErrorsMixin` turns any failure to read a checkpoint
file into an :class:`UnreadableCheckpointError` that names the file, the cause, the other
checkpoints in its folder and how to resume from, or evaluate, one of them.
"""

from __future__ import annotations

import os
import re
from typing import Any

__all__ = ["NamedReadErrorsMixin", "UnreadableCheckpointError", "other_checkpoints"]

# How many other checkpoints an error message names.
MAX_LISTED = 5


class UnreadableCheckpointError(RuntimeError):
    """A checkpoint file exists but cannot be read (truncated, corrupt, not a checkpoint)."""


def _iteration_key(name: str) -> tuple[int, int]:
    """Sort key, newest first once reversed: ``model_final.pth`` after every numbered one."""
    if name.startswith("model_final"):
        return (1, 0)
    match = re.search(r"(\d+)", name)
    return (0, int(match.group(1)) if match else -1)


def other_checkpoints(filename: str) -> list[str]:
    """Names of the ``*.pth`` files next to ``filename`` (``filename`` itself left out),
    newest first (``model_final.pth``, then by iteration number)."""
    directory = os.path.dirname(os.path.abspath(filename))
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    own = os.path.basename(filename)
    found = [name for name in names if name.endswith(".pth") and name != own]
    return sorted(found, key=_iteration_key, reverse=True)


def describe_unreadable(filename: str, error: BaseException) -> str:
    return _with_alternatives(
        filename,
        f"Cannot read checkpoint {filename} ({type(error).__name__}: {error}). The file is "
        "probably truncated or corrupt (a copy cut short, a full disk) or not a checkpoint.",
    )


def _with_alternatives(filename: str, message: str) -> str:
    """``message`` plus the other checkpoints next to ``filename`` and how to use one."""
    directory = os.path.dirname(os.path.abspath(filename))
    others = other_checkpoints(filename)
    if not others:
        return message + f" There is no other checkpoint (*.pth) in {directory}."
    listed = ", ".join(others[:MAX_LISTED])
    more = f" and {len(others) - MAX_LISTED} more" if len(others) > MAX_LISTED else ""
    return (
        f"{message} Other checkpoints in {directory}: {listed}{more}. To resume from one, "
        f"write its name into {os.path.join(directory, 'last_checkpoint')} (e.g. `echo "
        f"{others[0]} > {os.path.join(directory, 'last_checkpoint')}`) and rerun with "
        "--resume; to evaluate one, pass train.init_checkpoint=<its path>."
    )


class NamedReadErrorsMixin:
    """For a detectron2 / fvcore ``Checkpointer`` subclass (put it first among the bases):
    reading a checkpoint file that fails raises :class:`UnreadableCheckpointError`, naming the
    file and the other checkpoints next to it, with the original error as its cause; a local
    file that is missing (``last_checkpoint`` naming a deleted file) raises
    ``FileNotFoundError`` with the same list, instead of fvcore's bare assertion."""

    def load(self, path: str, *args: Any, **kwargs: Any) -> Any:
        if path and "://" not in path and not os.path.isfile(path):
            raise FileNotFoundError(
                _with_alternatives(path, f"Checkpoint {path} does not exist (deleted or moved?).")
            )
        return super().load(path, *args, **kwargs)  # type: ignore[misc]

    def _load_file(self, filename: str) -> Any:
        try:
            return super()._load_file(filename)  # type: ignore[misc]
        except Exception as error:
            raise UnreadableCheckpointError(describe_unreadable(filename, error)) from error
