"""Facts about the run a benchmark records next to its numbers, and the process's memory
high-water mark: shared by the benchmark tools (``tools/benchmark_*.py``). Standard library
only."""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = ["cpu_name", "git_commit", "peak_rss_probe", "proc_status_bytes", "reset_peak_rss"]


COMMIT_ENV = "DETR_EXT_COMMIT"


def git_commit(repo: str | os.PathLike) -> str:
    """Short commit of the git checkout at ``repo``, with ``-dirty`` when tracked files have
    uncommitted changes; ``"unknown"`` without git or outside a checkout. ``DETR_EXT_COMMIT``,
    when set, is returned instead: for a copy of a checkout without its ``.git`` (a GPU
    machine that is sent the working tree only)."""
    if os.environ.get(COMMIT_ENV):
        return os.environ[COMMIT_ENV]
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


def peak_rss_probe(
    command: Sequence[str],
    label: str,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike | None = None,
) -> int | None:
    """Run ``command``, a fresh process that measures its own peak memory with
    :func:`reset_peak_rss` / ``proc_status_bytes("VmHWM")`` and prints the bytes as its last
    stdout line, and return that number. The process's glibc maps every large block on its own
    and unmaps it on free (fixed mmap threshold, no trim threshold), so that its RSS follows
    the live memory instead of pages the heap keeps. ``env`` adds variables (e.g. the thread
    count). ``None``, with the reason on stderr prefixed by ``label``, where Linux's
    ``/proc/self/clear_refs`` is missing or the process fails."""
    if not os.path.exists("/proc/self/clear_refs"):
        print(f"{label}: no /proc/self/clear_refs (not Linux)", file=sys.stderr)
        return None
    full_env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
    full_env.update(env or {})
    result = subprocess.run(
        list(command), capture_output=True, text=True, check=False, env=full_env, cwd=cwd
    )
    lines = result.stdout.strip().splitlines()
    if result.returncode == 0 and lines and lines[-1].isdigit():
        return int(lines[-1])
    reason = (result.stderr.strip() or result.stdout.strip())[-500:]
    print(f"{label} failed (exit {result.returncode}): {reason}", file=sys.stderr)
    return None
