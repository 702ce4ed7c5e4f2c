"""Helpers shared by the generated datasets (``shapes``, ``shapes_grounding``,
``shapes_panoptic``): a lock that serializes the generation of one split across processes, the
manifest check that tells whether a previous run finished, and the root / split-size
arguments of their ``register_*`` functions."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from typing import Any

__all__ = ["exclusive_lock", "manifest_matches", "registration_splits"]


@contextlib.contextmanager
def exclusive_lock(path: str) -> Iterator[None]:
    """Serialize generation of one split across processes (e.g. distributed ranks)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: generation is still correct for a single process
        yield
        return
    with open(path, "a") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def manifest_matches(manifest_path: str, manifest: dict) -> bool:
    """Whether ``manifest_path`` holds exactly ``manifest`` (False when missing or unreadable)."""
    if not os.path.isfile(manifest_path):
        return False
    with open(manifest_path) as f:
        try:
            return json.load(f) == manifest
        except json.JSONDecodeError:
            return False


def registration_splits(
    caller: str, root: Any, default_root: str, num_train: Any, num_val: Any
) -> tuple[str, dict[str, int]]:
    """``(absolute root, {"train": num_train, "val": num_val})`` for ``caller`` (a
    ``register_*`` function), ``root=None`` meaning ``default_root``.

    Raises:
        ValueError: a split size that is not a positive int, naming ``caller`` and the split.
    """
    splits = {"train": num_train, "val": num_val}
    for split, num_images in splits.items():
        if not isinstance(num_images, int) or num_images < 1:
            raise ValueError(f"{caller}: num_{split} must be a positive int, got {num_images!r}")
    return os.path.abspath(os.fspath(default_root if root is None else root)), splits
