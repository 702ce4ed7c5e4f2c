"""tools/benchmark_msda.py on a tiny custom problem: every figure lands in the JSON."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tools"))

import benchmark_msda  # noqa: E402


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
        (loc, mode) for loc in ("realistic", "uniform") for mode in benchmark_msda.MODES
    }
    for row in rows:
        assert row["compiled_s"] > 0 and row["pytorch_s"] > 0
        assert row["speedup"] == pytest.approx(row["pytorch_s"] / row["compiled_s"])
        assert row["queries"] == 50 and row["shapes"] == [[8, 8], [4, 4]]
    assert result["environment"]["torch"]
    assert "| custom |" in (tmp_path / "bench.md").read_text()
    assert (tmp_path / "bench.png").stat().st_size > 0


def test_bad_shapes_argument_is_rejected():
    with pytest.raises(SystemExit):
        benchmark_msda.main(["--shapes", "8by8"])
