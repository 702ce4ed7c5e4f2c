"""A gloo process group for tests that spawn CPU processes (``torch.multiprocessing.spawn``)."""

from __future__ import annotations

import contextlib
import datetime
from collections.abc import Iterator

import torch.distributed as dist

# gloo gives up on a collective that another process never joins: a hang fails the test.
DEFAULT_TIMEOUT_S = 60


@contextlib.contextmanager
def gloo_group(
    rank: int, world_size: int, init_file: str, timeout_s: float = DEFAULT_TIMEOUT_S
) -> Iterator[None]:
    """Join a gloo group rendezvousing through ``init_file`` for the block; left after it."""
    dist.init_process_group(
        "gloo",
        init_method=f"file://{init_file}",
        rank=rank,
        world_size=world_size,
        timeout=datetime.timedelta(seconds=timeout_s),
    )
    try:
        yield
    finally:
        dist.destroy_process_group()
