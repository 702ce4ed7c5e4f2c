"""Facts about the run a benchmark records next to its numbers, and the process's memory
high-water mark: shared by the benchmark tools (``tools/benchmark_*.py``). Standard library
only."""

from __future__ import annotations

import os
import platform
import re
import subprocess
from pathlib import Path

__all__ = ["cpu_name", "git_commit", "proc_status_bytes", "reset_peak_rss"]


def git_commit(repo: str | os.PathLike) -> str:
    """Short commit of the git checkout at ``repo``, with ``-dirty`` when tracked files have
    uncommitted changes; ``"unknown"`` without git or outside a checkout."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("-dirty" if dirty else "")


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else ``platform``'s answer)."""
    name = platform.processor() or platform.machine()
    try:
        match = re.search(r"model name\s*:\s*(.+)", Path("/proc/cpuinfo").read_text())
    except OSError:
        return name
    return match.group(1).strip() if match else name


def proc_status_bytes(field: str) -> int | None:
    """A memory field of ``/proc/self/status`` (e.g. ``VmRSS``, ``VmHWM``: the resident set
    and its high-water mark) in bytes; ``None`` where Linux's ``/proc`` is missing."""
    try:
        with open("/proc/self/status") as status:
            match = re.search(rf"{field}:\s+(\d+) kB", status.read())
    except OSError:
        return None
    return int(match.group(1)) * 1024 if match else None


def reset_peak_rss() -> int | None:
    """Reset this process's resident-set high-water mark (``VmHWM``) to the current resident
    set; returns that in bytes (``None`` where Linux's ``/proc/self/clear_refs`` is missing)."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
    except OSError:
        return None
    return proc_status_bytes("VmRSS")
