"""tools/benchmark_train_step.py: bad arguments are usage errors, not tracebacks; the backends
take turns; --help shows the example as written; the CPU peak memory comes from a fresh probe
process and grows with the batch."""

from __future__ import annotations

import json
import os
import statistics
import subprocess

import pytest
import torch

from tests.tool_runs import SHAPES_CONFIGS, load_script


@pytest.mark.parametrize(
    "argument, message",
    [
        (["--repeat", "0"], "expected an integer >= 1"),
        (["--warmup", "-1"], "expected an integer >= 0"),
        (["--batch", "0"], "expected an integer >= 1"),
        (["--size", "8"], "expected an integer >= 32"),
        (["--device", "gpu0"], "--device"),
    ],
)
def test_bad_arguments_are_usage_errors(argument, message, capsys):
    main = load_script("tools/benchmark_train_step.py").main
    with pytest.raises(SystemExit) as info:
        main(["--config-file", str(SHAPES_CONFIGS["dino"]), *argument])
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_missing_config_and_absent_gpu_are_named(tmp_path, capsys):
    main = load_script("tools/benchmark_train_step.py").main
    with pytest.raises(SystemExit) as info:
        main(["--config-file", str(tmp_path / "none.py")])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"error: --config-file: expected a LazyConfig .py file, got '{tmp_path}/none.py'" in err
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit) as info:
            main(["--config-file", str(SHAPES_CONFIGS["dino"]), "--device", "cuda"])
        assert info.value.code == 2
        assert "error: --device cuda asked for, but torch sees no GPU" in capsys.readouterr().err


class _RecordingModel(torch.nn.Module):
    """Stands in for the detector: records the MSDA backend each step runs with, and a random
    number it draws (as dropout and denoising noise do)."""

    def __init__(self, calls: list) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(3))
        self.calls = calls

    def forward(self, inputs):
        draw = torch.rand(()).item()
        self.calls.append((os.environ["DETR_EXT_MSDA_BACKEND"], draw, self.weight.sum().item()))
        return {"loss": (self.weight * draw).sum()}

    def __deepcopy__(self, memo):  # the copy records into the same list
        copied = _RecordingModel(self.calls)
        copied.load_state_dict(self.state_dict())
        return copied


def test_backends_take_turns_with_the_same_weights_and_random_numbers(
    monkeypatch, tmp_path, capsys
):
    """All compiled steps were timed, then all PyTorch steps: on a busy machine the ratio swung
    from 9.3x to 0.43x between runs."""
    tool = load_script("tools/benchmark_train_step.py")
    calls: list = []
    monkeypatch.setattr(tool, "instantiate", lambda node: _RecordingModel(calls))
    monkeypatch.setenv("DETR_EXT_MSDA_BACKEND", "auto")
    report = tool.main(
        ["--config-file", str(SHAPES_CONFIGS["dino"]), "--size", "32", "--warmup", "1"]
        + ["--repeat", "3", "--json", str(tmp_path / "step.json"), "--no-memory"]
    )
    backends = [backend for backend, _, _ in calls]
    assert backends == ["compiled", "pytorch"] * 4  # 1 warm-up round, 3 timed rounds
    compiled = [call[1:] for call in calls[0::2]]
    pytorch = [call[1:] for call in calls[1::2]]
    assert compiled == pytorch  # same random numbers and weights, step by step
    assert len({weights for _, weights in compiled}) == 4  # each backend trains its own copy
    for backend in ("compiled", "pytorch"):
        result = report["results"][backend]
        assert len(result["times_s"]) == 3
        assert result["median_s"] == statistics.median(result["times_s"])
        assert result["peak_memory_bytes"] is None  # --no-memory: no probe, no extra steps
    assert report["memory_ratio_pytorch_over_compiled"] is None
    assert json.loads((tmp_path / "step.json").read_text())["results"] == report["results"]


def test_help_shows_the_example_on_its_own_lines(capsys):
    """The docstring's line continuation joined the example into one line in --help."""
    with pytest.raises(SystemExit) as info:
        load_script("tools/benchmark_train_step.py").main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "python tools/benchmark_train_step.py \\\n        --config-file projects/" in out


def test_memory_probe_process_gets_the_problem_threads_and_allocator_settings(monkeypatch, capsys):
    """The probe process is this script with the same config, overrides, size and batch, the
    parent's thread count and glibc's mmap / trim thresholds; a failed probe or a missing
    ``/proc/self/clear_refs`` is ``None`` with the reason on stderr."""
    tool = load_script("tools/benchmark_train_step.py")
    calls = []

    def fake_run(command, **kwargs):
        calls.append((command, kwargs["env"]))
        return subprocess.CompletedProcess(command, 0, stdout="a warning\n12345\n", stderr="")

    monkeypatch.setattr(subprocess, "run", fake_run)
    if os.path.exists("/proc/self/clear_refs"):
        peak = tool.cpu_peak_memory("c.py", ["a=1", "b=2"], 64, 2, "pytorch", threads=3)
        assert peak == 12345
        command, env = calls[0]
        assert command[command.index("--config-file") + 1] == "c.py"
        assert command[command.index("--size") + 1] == "64"
        assert command[command.index("--batch") + 1] == "2"
        assert command[-4:] == ["--memory-probe", "pytorch", "a=1", "b=2"]
        assert env["OMP_NUM_THREADS"] == "3"
        assert env["MALLOC_MMAP_THRESHOLD_"] == "65536" and env["MALLOC_TRIM_THRESHOLD_"] == "0"
        # A failed probe is None with its reason, not a crash of the benchmark.
        monkeypatch.setattr(
            subprocess,
            "run",
            lambda command, **kw: subprocess.CompletedProcess(command, 1, "", "Boom: no model"),
        )
        assert tool.cpu_peak_memory("c.py", [], 64, 1, "compiled", threads=1) is None
        assert "compiled memory probe failed (exit 1): Boom: no model" in capsys.readouterr().err
    real_exists = os.path.exists
    monkeypatch.setattr(
        os.path, "exists", lambda path: path != "/proc/self/clear_refs" and real_exists(path)
    )
    calls.clear()
    assert tool.cpu_peak_memory("c.py", [], 64, 1, "pytorch", threads=1) is None
    assert not calls
    assert "no /proc/self/clear_refs (not Linux)" in capsys.readouterr().err


@pytest.fixture
def one_thread():
    """One intra-op thread here and so in the probe processes (which get the parent's count):
    with 2 threads on 2 shared cores the test took 57 s instead of 15 s."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux /proc")
def test_cpu_peak_memory_is_measured_per_backend_and_grows_with_the_batch(
    tmp_path, capsys, one_thread
):
    """A real probe of the small shapes DINO at 64 px: both peaks are positive byte counts, and
    the PyTorch path's peak at batch 2 exceeds the one at batch 1 (weight gradients make up
    most of the batch-1 peak, about 20 MiB; batch 2 adds about 10 MiB)."""
    tool = load_script("tools/benchmark_train_step.py")
    config = str(SHAPES_CONFIGS["dino"])
    report = tool.main(
        ["--config-file", config, "--size", "64", "--batch", "1", "--warmup", "0"]
        + ["--repeat", "1", "--json", str(tmp_path / "step.json")]
    )
    peaks = {}
    for backend in ("compiled", "pytorch"):
        peaks[backend] = report["results"][backend]["peak_memory_bytes"]
        assert isinstance(peaks[backend], int) and peaks[backend] > 0, peaks
    assert report["memory_ratio_pytorch_over_compiled"] == peaks["pytorch"] / peaks["compiled"]
    saved = json.loads((tmp_path / "step.json").read_text())
    assert saved["results"]["pytorch"]["peak_memory_bytes"] == peaks["pytorch"]
    out = capsys.readouterr().out
    assert "peak MiB" in out and "peak memory ratio" in out
    batch_2 = tool.cpu_peak_memory(config, [], 64, 2, "pytorch", threads=1)
    assert batch_2 is not None and batch_2 > peaks["pytorch"] * 1.25, (batch_2, peaks)
