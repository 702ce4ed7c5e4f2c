"""leave_process_group: a launched process ends with its process groups destroyed and their
threads stopped, after the others reach the same point. With detectron2's local group and
its cached gloo WORLD still referenced, gloo's worker threads outlived ``main``; one still
releasing the last barrier's work while Python finalized aborted the process ("terminate
called without an active exception", SIGABRT), failing finished 2-process runs in CI."""

from __future__ import annotations

import datetime
import os
import sys

import pytest
import torch.distributed as dist
import torch.multiprocessing as mp
from detectron2.utils import comm

from detr_ext.engine import leave_process_group


def _gloo_threads() -> list[str]:
    names = []
    for task in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{task}/comm") as f:
            name = f.read().strip()
        if "gloo" in name.lower():
            names.append(name)
    return names


def _process(rank: int, init_file: str, results) -> None:
    dist.init_process_group(
        "gloo",
        init_method=f"file://{init_file}",
        rank=rank,
        world_size=2,
        timeout=datetime.timedelta(seconds=60),
    )
    comm.create_local_process_group(2)  # what detectron2's launch does
    assert comm.all_gather(rank) == [0, 1]  # caches detectron2's gloo WORLD
    before = _gloo_threads()
    leave_process_group()
    results[rank] = (dist.is_initialized(), bool(before), _gloo_threads())
    leave_process_group()  # nothing left to leave: a no-op


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="lists threads in /proc")
def test_each_process_leaves_its_groups_and_their_threads(tmp_path):
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_process, args=(str(tmp_path / "init"), results), nprocs=2)
        assert dict(results) == {0: (False, True, []), 1: (False, True, [])}
    leave_process_group()  # outside a distributed run: a no-op
