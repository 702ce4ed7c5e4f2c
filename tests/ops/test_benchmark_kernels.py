"""detr_ext.ops.benchmark_kernels: the kernels step's rows and switches here; the timed rows
themselves run on a GPU (tools/gpu_check.py kernels)."""

from __future__ import annotations

import os

import pytest

from detr_ext.ops.benchmark import DTYPES, PRESETS
from detr_ext.ops.benchmark_kernels import KERNEL_ROWS, LEAN_ENV, TILE_ENV, set_tile


def test_set_tile_sets_and_unsets_the_group_order_and_the_forward_gather(monkeypatch):
    # Recorded first, so that the process's own settings come back after the test.
    monkeypatch.setenv(TILE_ENV, "7")
    monkeypatch.setenv(LEAN_ENV, "1")
    set_tile(32, lean=0)
    assert (os.environ[TILE_ENV], os.environ[LEAN_ENV]) == ("32", "0")
    set_tile(8)  # the default gather again
    assert os.environ[TILE_ENV] == "8" and LEAN_ENV not in os.environ
    set_tile(None)
    assert TILE_ENV not in os.environ and LEAN_ENV not in os.environ


@pytest.mark.parametrize("row", KERNEL_ROWS, ids=str)
def test_kernel_rows_name_known_problems_and_start_at_the_default_order(row):
    # run_row compares every tile's output with the first one's ("forward_equals_tile_1").
    preset, batch, dtype, coord_dtype, locations, tiles = row
    assert preset in PRESETS and batch >= 1 and {dtype, coord_dtype} <= set(DTYPES)
    assert locations in ("realistic", "uniform")
    assert tiles[0] == 1 and list(tiles) == sorted(set(tiles))
