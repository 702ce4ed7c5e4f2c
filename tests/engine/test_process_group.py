"""leave_process_group: a launched process ends with its process group destroyed, after the
others reach the same point (a process exiting with gloo's threads alive aborted in its
teardown once in CI, "terminate called without an active exception", failing a finished
--eval-only run)."""

from __future__ import annotations

import datetime

import torch.distributed as dist
import torch.multiprocessing as mp

from detr_ext.engine import leave_process_group


def _process(rank: int, init_file: str, results) -> None:
    dist.init_process_group(
        "gloo",
        init_method=f"file://{init_file}",
        rank=rank,
        world_size=2,
        timeout=datetime.timedelta(seconds=60),
    )
    leave_process_group()
    results[rank] = dist.is_initialized()
    leave_process_group()  # nothing left to leave: a no-op


def test_each_process_leaves_its_group(tmp_path):
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_process, args=(str(tmp_path / "init"), results), nprocs=2)
        assert dict(results) == {0: False, 1: False}
    leave_process_group()  # outside a distributed run: a no-op
