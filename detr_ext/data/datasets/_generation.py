"""Helpers shared by the generated datasets (``shapes``, ``shapes_panoptic``): a lock that
serializes the generation of one split across processes, and the manifest check that tells
whether a previous run finished."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator

__all__ = ["exclusive_lock", "manifest_matches"]


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
