"""detr_ext.ops.benchmark (the MSDA benchmark's inputs, timing and run facts) and
detr_ext.utils.run_info."""

from __future__ import annotations

import mmap
import sys

import pytest
import torch

from detr_ext.ops.benchmark import (
    PRESETS,
    Problem,
    environment,
    make_inputs,
    median_time,
    reference_points,
)
from detr_ext.utils.run_info import cpu_name, git_commit, proc_status_bytes, reset_peak_rss


def test_realistic_locations_stay_near_their_reference_points():
    problem = Problem("small", ((10, 12), (5, 6)), None, 2, 4, 2)
    _, shapes, _, locations, _ = make_inputs(problem, 1, torch.float32, "cpu", "realistic")
    centres = reference_points(problem, 1, torch.Generator())
    level_size = shapes.flip(-1).float()[None, None, None, :, None, :]  # (width, height)
    pixels = (locations - centres[:, :, None, None, None, :]).abs() * level_size
    assert 0.5 < pixels.mean() < 3.0 and pixels.max() < 15.0


def test_inputs_have_the_operators_layout_and_dtypes():
    problem = Problem("small", ((4, 6), (2, 3)), 7, heads=2, channels=4, points=3)
    value, shapes, starts, locations, weights = make_inputs(
        problem, 2, torch.bfloat16, "cpu", "uniform", requires_grad=True
    )
    assert value.shape == (2, 30, 2, 4) and value.dtype == torch.bfloat16
    assert shapes.tolist() == [[4, 6], [2, 3]] and starts.tolist() == [0, 24]
    assert locations.shape == (2, 7, 2, 2, 3, 2) and locations.dtype == torch.float32
    assert 0 <= locations.min() and locations.max() <= 1
    torch.testing.assert_close(weights.sum((-2, -1)), torch.ones(2, 7, 2))
    assert value.requires_grad and locations.requires_grad and weights.requires_grad
    with pytest.raises(ValueError, match="'realistic' or 'uniform', got 'grid'"):
        make_inputs(problem, 1, torch.float32, "cpu", "grid")


def test_encoder_preset_has_a_query_per_value_position():
    encoder, decoder = PRESETS["encoder"], PRESETS["decoder"]
    assert encoder.num_queries == encoder.num_values == 100 * 167 + 50 * 84 + 25 * 42 + 13 * 21
    assert decoder.num_queries == 900


def test_interleaved_times_divide_a_burst_by_its_calls(monkeypatch):
    """A timed interval of `burst` calls counts as `burst` calls: with a clock that advances
    1 s per call of one run and 3 s per call of the other, every burst gives 1 s and 3 s."""
    from detr_ext.ops import benchmark

    clock = [0.0]
    calls = {"a": 0, "b": 0}

    def make(name, seconds):
        def run():
            calls[name] += 1
            clock[0] += seconds

        return run

    monkeypatch.setattr(benchmark.time, "perf_counter", lambda: clock[0])
    runs = {"a": make("a", 1.0), "b": make("b", 3.0)}
    times = benchmark.interleaved_median_times(runs, "cpu", warmup=2, repeat=3, burst=4)
    assert times == {"a": 1.0, "b": 3.0}
    assert calls == {"a": 2 + 3 * 4, "b": 2 + 3 * 4}
    assert median_time(make("a", 2.0), "cpu", warmup=0, repeat=1, burst=5) == 2.0
    with pytest.raises(ValueError, match="burst >= 1, got 2, 0 and 0"):
        benchmark.interleaved_median_times(runs, "cpu", warmup=0, repeat=2, burst=0)


def test_median_time_and_run_facts(tmp_path, monkeypatch):
    monkeypatch.delenv("DETR_EXT_COMMIT", raising=False)
    calls = []
    assert median_time(lambda: calls.append(1), "cpu", warmup=2, repeat=3) >= 0
    assert len(calls) == 5
    env = environment("cpu")
    assert env["torch"] == torch.__version__ and env["device_name"] == cpu_name() != ""
    assert env["commit"] != "unknown"  # the tests run in a checkout
    assert git_commit(tmp_path) == "unknown"  # not a checkout
    # A copy without .git (the GPU machine gets the working tree only) is told its commit.
    monkeypatch.setenv("DETR_EXT_COMMIT", "fea3da1")
    assert git_commit(tmp_path) == "fea3da1" == environment("cpu")["commit"]
    # Linux has /proc/self/status (a Linux runner without it would leave the probe unchecked).
    assert (proc_status_bytes("VmRSS") is not None) == sys.platform.startswith("linux")
    if sys.platform.startswith("linux"):
        # A fresh anonymous mapping: new pages whatever memory the process freed before.
        size = 64 * 2**20
        baseline = reset_peak_rss()
        with mmap.mmap(-1, size) as block:
            for offset in range(0, size, mmap.PAGESIZE):
                block[offset] = 1
            assert proc_status_bytes("VmHWM") - baseline >= 60 * 2**20
