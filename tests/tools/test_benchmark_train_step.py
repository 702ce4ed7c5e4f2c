"""tools/benchmark_train_step.py: bad arguments are usage errors, not tracebacks."""

from __future__ import annotations

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
    with pytest.raises(SystemExit):
        main(["--config-file", str(tmp_path / "none.py")])
    assert "expected a LazyConfig .py file" in capsys.readouterr().err
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit):
            main(["--config-file", str(SHAPES_CONFIGS["dino"]), "--device", "cuda"])
        assert "torch sees no GPU" in capsys.readouterr().err
