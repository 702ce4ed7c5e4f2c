"""tools/benchmark_train_step.py: bad arguments are usage errors, not tracebacks; the backends
take turns; --help shows the example as written."""

from __future__ import annotations

import json
import os
import statistics

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
        + ["--repeat", "3", "--json", str(tmp_path / "step.json")]
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
    assert json.loads((tmp_path / "step.json").read_text())["results"] == report["results"]


def test_help_shows_the_example_on_its_own_lines(capsys):
    """The docstring's line continuation joined the example into one line in --help."""
    with pytest.raises(SystemExit) as info:
        load_script("tools/benchmark_train_step.py").main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "python tools/benchmark_train_step.py \\\n        --config-file projects/" in out
