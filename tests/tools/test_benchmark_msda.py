"""tools/benchmark_msda.py on a tiny custom problem: every figure lands in the JSON; its timed
steps (detr_ext.ops.benchmark_steps) and CPU memory probe (detr_ext.ops.benchmark_memory)."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from detr_ext.ops.benchmark_memory import peak_memory
from detr_ext.ops.benchmark_steps import (
    BACKENDS,
    MODES,
    TOLERANCES,
    output_difference,
    step_function,
)
from tests.tool_runs import load_script

benchmark_msda = load_script("tools/benchmark_msda.py")


def test_tiny_custom_run_writes_json_markdown_and_plot(tmp_path):
    out = tmp_path / "bench.json"
    result = benchmark_msda.main(
        [
            "--shapes", "8x8,4x4", "--queries", "50", "--heads", "2", "--channels", "8",
            "--points", "2", "--locations", "realistic", "uniform",
            "--warmup", "1", "--repeat", "2", "--device", "cpu",
            "--json", str(out), "--markdown", str(tmp_path / "bench.md"),
            "--plot", str(tmp_path / "bench.png"),
        ]
    )  # fmt: skip
    rows = json.loads(out.read_text())["results"]
    assert len(rows) == 4  # 2 location kinds x forward, forward+backward
    assert {(r["locations"], r["mode"]) for r in rows} == {
        (loc, mode) for loc in ("realistic", "uniform") for mode in MODES
    }
    for row in rows:
        assert row["compiled_s"] > 0 and row["pytorch_s"] > 0
        assert 0 <= row["max_output_difference"] <= TOLERANCES["float32"]
        assert row["speedup"] == pytest.approx(row["pytorch_s"] / row["compiled_s"])
        assert row["queries"] == 50 and row["shapes"] == [[8, 8], [4, 4]]
    assert result["environment"]["torch"]
    assert result["burst"] == 1  # the CPU default: each step timed alone
    markdown = (tmp_path / "bench.md").read_text()
    assert "| custom |" in markdown
    assert "median of 2 runs after 1 warm-up runs, each run timed alone." in markdown
    assert [benchmark_msda._ms(s) for s in (0.000275, 0.0131, 0.25)] == ["0.28", "13.1", "250.0"]
    assert (tmp_path / "bench.png").stat().st_size > 0


@pytest.mark.parametrize("shapes", ["8by8", "8x0", "8x8,4", ""])
def test_bad_shapes_argument_is_rejected(shapes, capsys):
    """The parser's rejection, not a later exit (without the extension main stopped for the
    missing kernel, so a broken parse_shapes went unnoticed)."""
    with pytest.raises(SystemExit) as info:
        benchmark_msda.main(["--shapes", shapes])
    assert info.value.code == 2
    expected = f"argument --shapes: expected shapes like '100x167,50x84', got {shapes!r}"
    assert expected in capsys.readouterr().err


@pytest.mark.parametrize(
    "argument",
    [
        ["--repeat", "0"],
        ["--threads", "0"],
        ["--threads", "-1"],
        ["--batch", "0"],
        ["--queries", "0"],
        ["--heads", "0"],
        ["--channels", "0"],
        ["--points", "0"],
        ["--warmup", "-1"],
        ["--repeat", "two"],
        ["--burst", "0"],
    ],
)
def test_bad_counts_are_refused_by_the_parser(argument, capsys):
    """--repeat 0 was a StatisticsError traceback, --threads -1 a RuntimeError, 0 for a size
    ran on empty tensors and wrote speedup rows, --threads 0 was ignored."""
    with pytest.raises(SystemExit) as info:
        benchmark_msda.main(["--shapes", "4x4", "--no-memory", *argument])
    assert info.value.code == 2
    assert "expected an integer >=" in capsys.readouterr().err


def test_missing_from_json_is_named(tmp_path):
    with pytest.raises(SystemExit, match="--from-json: expected a results JSON file"):
        benchmark_msda.main(["--from-json", str(tmp_path / "none.json")])


def test_timing_sentence_names_the_burst():
    result = {"repeat": 25, "warmup": 5, "burst": 10}
    assert benchmark_msda.timing_sentence(result) == (
        "median of 25 runs after 5 warm-up runs; a run is 10 steps queued back to back (the host "
        "runs ahead of the GPU, as in a training loop), its time over 10."
    )
    del result["burst"]  # results written before --burst timed every step alone
    assert benchmark_msda.timing_sentence(result).endswith("each run timed alone.")


def test_burst_is_passed_to_the_timing(monkeypatch, tmp_path):
    seen = []

    def fake_times(runs, device, warmup, repeat, burst=1):
        seen.append(burst)
        return {name: 1.0 for name in runs}

    monkeypatch.setattr(benchmark_msda, "interleaved_median_times", fake_times)
    result = benchmark_msda.main(
        [
            "--shapes", "4x4", "--queries", "3", "--heads", "1", "--channels", "2",
            "--points", "1", "--locations", "uniform", "--mode", "forward", "--burst", "7",
            "--device", "cpu", "--no-memory", "--json", str(tmp_path / "b.json"),
        ]
    )  # fmt: skip
    assert seen == [7] and result["burst"] == 7
    assert json.loads((tmp_path / "b.json").read_text())["burst"] == 7


def test_the_baseline_is_the_plain_grid_sample_computation():
    """The timed PyTorch path is Deformable DETR's grid_sample computation (not the fallback
    with non-finite handling, 13-17 % slower), equal to the library's oracle."""
    from detr_ext.ops import ms_deform_attn_pytorch
    from detr_ext.ops.benchmark import Problem, grid_sample_baseline, make_inputs

    problem = Problem("t", ((6, 7), (3, 4)), 5, heads=2, channels=3, points=2)
    inputs = make_inputs(problem, 2, torch.float64, "cpu", "uniform")
    run = step_function("pytorch", "forward", inputs)
    value, shapes, _, locations, weights = inputs
    torch.testing.assert_close(run(), ms_deform_attn_pytorch(value, shapes, locations, weights))
    # The level sizes as host pairs (how the timed step passes them: no device read per call).
    torch.testing.assert_close(
        grid_sample_baseline(value, [(6, 7), (3, 4)], locations, weights), run()
    )
    assert output_difference(problem, 1, "float64", "cpu", "uniform") < 1e-12


def test_cpu_memory_probe_measures_a_warm_step():
    """A cold first call counted ~35 MiB of one-time costs as the op's forward+backward memory
    on a problem whose tensors take a few bytes (the probe runs in a fresh process)."""
    from detr_ext.ops.benchmark import Problem

    tiny = Problem("tiny", ((1, 1),), 1, heads=1, channels=1, points=1)
    for backend in BACKENDS:
        peak = peak_memory(tiny, 1, "float32", "cpu", "uniform", backend, "forward_backward", 1)
        if peak is None and not sys.platform.startswith("linux"):
            pytest.skip("no /proc/self/clear_refs: the CPU probe is Linux-only")
        assert peak is not None, f"{backend}: no peak memory on Linux (/proc/self/clear_refs)"
        assert peak < 8 * 2**20, (backend, peak / 2**20)
