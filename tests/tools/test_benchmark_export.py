"""tools/benchmark_export.py: bad counts are usage errors before any model is built."""

from __future__ import annotations

import pytest

from tests.tool_runs import load_script


@pytest.mark.parametrize(
    "argument, message",
    [
        (["--runs", "0"], "expected an integer >= 1"),
        (["--warmup", "-1"], "expected an integer >= 0"),
        (["--threads", "0"], "expected an integer >= 1"),
        (["--example-size", "320", "8"], "expected an integer >= 32"),
        (["--runs", "two"], "got 'two'"),
    ],
)
def test_bad_arguments_are_usage_errors(argument, message, capsys, tmp_path):
    main = load_script("tools/benchmark_export.py").main
    with pytest.raises(SystemExit) as info:
        main([*argument, "--output-dir", str(tmp_path)])
    assert info.value.code == 2
    assert message in capsys.readouterr().err
    assert not any(tmp_path.iterdir())
