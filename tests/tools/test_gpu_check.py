"""tools/gpu_check.py and tools/gpu_check.sh, the parts that run without a GPU: the report and
the choice of query tile from a kernels JSON, a failed C++ check raising in its own process, the
refusal to measure without a GPU, and the shell script's bookkeeping (summary, logs archive)
when it runs no step. The GPU steps themselves run on a GPU machine (README, "GPU check")."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch

from tests.tool_runs import load_script

gpu_check = load_script("tools/gpu_check.py")
REPO = Path(__file__).resolve().parents[2]


def _kernel_row(preset, dtype, tile, forward_s, backward_s, batch=2, locations="realistic"):
    return {
        "preset": preset,
        "batch": batch,
        "dtype": dtype,
        "coord_dtype": "float32",
        "locations": locations,
        "query_tile": tile,
        "forward_s": forward_s,
        "backward_s": backward_s,
        "forward_over_floor": forward_s / 40e-6,
        "backward_over_floor": backward_s / 60e-6,
    }


def _write_results(tmp_path: Path) -> tuple[Path, Path]:
    bandwidth = tmp_path / "bandwidth.json"
    bandwidth.write_text(
        json.dumps(
            {
                "bandwidth_bytes_per_s": 4.27e12,
                "environment": {
                    "device_name": "NVIDIA H200",
                    "torch": "2.11.0",
                    "torch_cuda": "13.0",
                    "commit": "abc1234",
                },
            }
        )
    )
    kernels = tmp_path / "kernels.json"
    rows = [
        _kernel_row("encoder", "float32", 1, 209e-6, 895e-6),
        _kernel_row("encoder", "float32", 32, 205e-6, 886e-6),
        _kernel_row("encoder", "float32", 64, 200e-6, 950e-6),  # faster forward, slower sum
        _kernel_row("encoder", "float32", 8, 100e-6, 100e-6, locations="uniform"),  # not B2 real.
        _kernel_row("encoder", "bfloat16", 4, 100e-6, 100e-6),
        # Rows of kernel variants, as earlier runs wrote them (the variants are gone, the rows
        # are still read): the fastest, but not that run's default kernels, so not the
        # profile's tile.
        {
            **_kernel_row("encoder", "bfloat16", 1, 168e-6, 900e-6),
            "half_backward_pack": 4,
            "packs_compared": True,
        },
        {
            **_kernel_row("encoder", "float32", 16, 150e-6, 880e-6),
            "forward_unroll": 2,
            "unrolls_compared": True,
        },
        {
            **_kernel_row("encoder", "float32", 64, 190e-6, 870e-6),
            "half_backward_pack": 8,
            "forward_unroll": 1,
            "forward_lean": 1,
            "packs_compared": False,
            "unrolls_compared": True,
            "leans_compared": True,
        },
        # A row of the forward's former prefetching variant (7615a0a's run): fastest, not the
        # default.
        {**_kernel_row("encoder", "float32", 1, 140e-6, 880e-6), "forward_prefetch": 1},
    ]
    kernels.write_text(json.dumps({"results": rows}))
    return bandwidth, kernels


def test_best_tile_is_the_fastest_forward_plus_backward_of_encoder_b2_float32(tmp_path, capsys):
    _, kernels = _write_results(tmp_path)
    gpu_check.main(["best-tile", "--kernels", str(kernels)])
    assert capsys.readouterr().out.strip() == "32"


def test_report_is_a_markdown_table_of_every_row(tmp_path):
    bandwidth, kernels = _write_results(tmp_path)
    markdown = tmp_path / "kernels.md"
    gpu_check.main(
        [
            "report",
            "--bandwidth",
            str(bandwidth),
            "--kernels",
            str(kernels),
            "--markdown",
            str(markdown),
        ]
    )
    text = markdown.read_text()
    assert "NVIDIA H200" in text and "4.27 TB/s" in text and "abc1234" in text
    lines = [line for line in text.splitlines() if line.startswith("| encoder")]
    assert len(lines) == 9
    assert lines[-4].startswith("| encoder | 2 | bfloat16 | float32 | realistic | 1, half pack 4 |")
    assert lines[-3].startswith("| encoder | 2 | float32 | float32 | realistic | 16, unroll 2 |")
    assert lines[-2].startswith(
        "| encoder | 2 | float32 | float32 | realistic | 64, unroll 1, lean 1 |"
    )
    assert lines[-1].startswith("| encoder | 2 | float32 | float32 | realistic | 1, prefetch |")
    assert (
        "| encoder | 2 | float32 | float32 | realistic | 32 | 205.0 | 5.12 | 886.0 | 14.77 |"
        in lines
    )


def test_a_failed_check_raises_in_its_own_process():
    run = subprocess.run(
        [sys.executable, "tools/gpu_check.py", "error-case", "cpu_check"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    assert "expected attention_weights of shape [1, 3, 2, 1, 2]" in run.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without a GPU")
@pytest.mark.parametrize("command", [["bandwidth"], ["kernels", "--bandwidth", "x.json"]])
def test_measuring_without_a_gpu_is_refused(command):
    with pytest.raises(SystemExit, match="torch sees no CUDA GPU"):
        gpu_check.main(command)


def _run_shell_script(out: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", "tools/gpu_check.sh"],
        cwd=REPO,
        env={**os.environ, "OUT": str(out), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_shell_script_without_steps_writes_its_summary_and_logs(tmp_path):
    out = tmp_path / "out"
    run = _run_shell_script(out, GPU_CHECK_STEPS="")
    assert run.returncode == 0, run.stderr
    assert (out / "summary.txt").read_text().startswith("----")
    with tarfile.open(out / "logs.tgz") as archive:
        assert archive.getnames() == ["."]


def test_shell_script_skips_the_steps_past_its_deadline(tmp_path):
    """GPU_CHECK_DEADLINE: a step that would start after it is skipped and named in the summary
    (the run still ends with its summary and logs archive, inside a lease's command limit)."""
    out = tmp_path / "out"
    run = _run_shell_script(out, GPU_CHECK_STEPS="env errors", GPU_CHECK_DEADLINE="0")
    assert run.returncode == 0, run.stderr
    summary = (out / "summary.txt").read_text().splitlines()
    assert summary[:2] == [
        "step env: skipped, past GPU_CHECK_DEADLINE=0 s",
        "step errors: skipped, past GPU_CHECK_DEADLINE=0 s",
    ]
    assert (out / "logs.tgz").is_file()


@pytest.mark.cuda
def test_trace_reports_host_time_and_gpu_span_of_a_step(tmp_path, capsys):
    out, trace = tmp_path / "trace.json", tmp_path / "chrome.json"
    gpu_check.main(["trace", "--preset", "decoder", "--json", str(out), "--trace-file", str(trace)])
    result = json.loads(out.read_text())
    assert result["preset"] == "decoder" and result["step_span_s"] > 0 < result["step_cpu_s"]
    assert result["step_queued_s"] > 0
    assert "ms_deform_attn" in trace.read_text() and "Self CPU" in capsys.readouterr().out
