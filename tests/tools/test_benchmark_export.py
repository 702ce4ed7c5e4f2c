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


@pytest.mark.parametrize(
    "argument, written, kept",
    [
        (["--quick"], "output/benchmark_export", "benchmarks/results"),
        ([], "benchmarks/results", "output/benchmark_export"),
    ],
)
def test_quick_reports_leave_the_committed_results_alone(
    argument, written, kept, monkeypatch, tmp_path
):
    """``--quick`` without --output-dir overwrote benchmarks/results/export_cpu.{json,md}, the
    committed results the README quotes; a full run still writes them there."""
    tool = load_script("tools/benchmark_export.py")
    monkeypatch.setattr(tool, "REPO", tmp_path)
    monkeypatch.setattr(tool, "environment", lambda: {})
    monkeypatch.setattr(tool, "markdown_table", lambda result: "table\n")
    cases = []
    monkeypatch.setattr(
        tool, "measure_case", lambda name, formats, args, work_dir: cases.append(name) or []
    )
    tool.main(argument)
    assert cases == (["detr_shapes"] if argument else list(tool.CASES))
    assert sorted(path.name for path in (tmp_path / written).iterdir()) == [
        "export_cpu.json",
        "export_cpu.md",
    ]
    assert not (tmp_path / kept).exists()


def test_help_says_where_quick_reports_go(capsys):
    with pytest.raises(SystemExit) as info:
        load_script("tools/benchmark_export.py").main(["--help"])
    assert info.value.code == 0
    help_text = " ".join(capsys.readouterr().out.split())
    assert "with --quick output/benchmark_export" in help_text
