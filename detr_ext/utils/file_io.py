"""Writing files so that a reader never sees a partial one (checkpoints, cleaned dataset
jsons, the demo's results): a hidden temporary file in the same directory, then a rename."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable
from typing import IO, Any

__all__ = ["atomic_write", "atomic_write_json"]


def atomic_write(path: str | os.PathLike, write: Callable[[IO], None], mode: str = "wb") -> None:
    """Write ``path`` through ``write(file)`` so that ``path`` never holds a partial file.

    ``write`` gets a file opened with ``mode`` (``"wb"`` or ``"w"``) on a temporary file
    ``.<name>.<random>.tmp`` in the same directory; once it returns, the data is flushed and
    fsync'ed and the temporary file is renamed to ``path`` (:func:`os.replace`, atomic on POSIX
    and Windows within one file system). If ``write`` raises, the temporary file is removed and
    ``path`` is left as it was. A process killed meanwhile leaves at most the hidden temporary
    file. The result is readable by others (0644), as a plain ``open`` would leave it, not
    ``mkstemp``'s 0600.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_write: expected mode 'wb' or 'w', got {mode!r}")
    directory, basename = os.path.split(os.path.abspath(os.fspath(path)))
    fd, tmp_path = tempfile.mkstemp(prefix=f".{basename}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, mode) as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(tmp_path, 0o644)
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp_path)
        raise
    # Make the rename itself durable; not possible on every platform / file system.
    with contextlib.suppress(OSError):
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def atomic_write_json(path: str | os.PathLike, content: Any, **dumps_kwargs: Any) -> None:
    """:func:`atomic_write` of ``json.dumps(content, **dumps_kwargs)`` (the C encoder: several
    times faster than ``json.dump`` on a large file)."""
    text = json.dumps(content, **dumps_kwargs)
    atomic_write(path, lambda file: file.write(text), mode="w")
