"""tools/train_shapes_demo.py in subprocesses with the DETR shapes config on a shapes dataset
shrunk to a few images: train 2 iterations, evaluate, draw; then --skip-train."""

import json
import subprocess
from pathlib import Path

import pytest
import yaml
from PIL import Image

from tests.tool_runs import TINY_SHAPES_CONFIG, load_script, run_tool

REPO_ROOT = Path(__file__).resolve().parents[2]


def run_script(work_dir: Path, *args: str) -> subprocess.CompletedProcess:
    config = str(work_dir / "detr_shapes_tiny.py")
    return run_tool(
        "train_shapes_demo.py",
        ["--config-file", config, *args],
        cwd=work_dir,
        datasets=work_dir / "datasets",
    )


@pytest.fixture(scope="module")
def work_dir(tmp_path_factory):
    work_dir = tmp_path_factory.mktemp("train_shapes_demo")
    base = REPO_ROOT / "projects" / "detr" / "configs" / "detr_shapes.py"
    (work_dir / "detr_shapes_tiny.py").write_text(TINY_SHAPES_CONFIG.format(base=str(base)))
    return work_dir


def _recorded_seed(output_dir: Path) -> int:
    return yaml.unsafe_load((output_dir / "config.yaml").read_text())["train"]["seed"]


def test_train_evaluate_draw_then_resume_then_skip_train(work_dir):
    """--resume and --skip-train drew a new seed, printed it as the run's and wrote it to
    config.yaml (a seed nothing was trained with); --skip-train wrote ``seed: null``."""
    output_dir = work_dir / "output"
    result = run_script(
        work_dir, "--output-dir", str(output_dir), "--num-processes", "2", "train.seed=-1"
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-8000:]

    assert "iter: 1  total_loss" in output  # the progress line of CommonMetricPrinter
    assert "Evaluation results for bbox" in output and "copypaste: Task: bbox" in output
    assert "box AP = " in result.stdout and "after 2 iterations in " in result.stdout

    summary = json.loads((output_dir / "summary.json").read_text())
    assert summary["iterations"] == 2 and summary["trained"] is True
    assert summary["start_iter"] == 0
    assert isinstance(summary["box_AP"], float) and 0 <= summary["box_AP"] <= 100
    assert summary["box_AP"] == summary["results"]["bbox"]["AP"]
    assert summary["train_seconds"] > 0 and summary["wall_seconds"] >= summary["train_seconds"]
    assert isinstance(summary["eval_seconds"], float)  # do_train's final evaluation (was None)
    assert summary["num_processes"] == 2  # gloo DDP on the CPU
    # train.seed=-1: a seed was drawn, recorded and printed so that the run can be repeated.
    assert isinstance(summary["seed"], int) and summary["seed"] >= 0
    assert f"add train.seed={summary['seed']} to repeat this run" in result.stdout
    # Both processes drew the same seed (rank 0's), so train.seed=<seed> repeats the DDP run.
    for log in ("log.txt", "log.txt.rank1"):
        assert f"drew seed {summary['seed']} " in (output_dir / log).read_text(), log
    assert output.count("Evaluation results for bbox") == 1
    assert len(summary["predictions_images"]) == 3  # the whole shrunk val split
    with Image.open(output_dir / "predictions.png") as grid:
        assert grid.format == "PNG" and grid.width > grid.height  # one row of three
    # detr_shapes.py logs every 20 iterations; the script shortens that for live progress.
    assert "log_period: 5" in (output_dir / "config.yaml").read_text()
    seed = summary["seed"]
    assert _recorded_seed(output_dir) == seed

    # One more iteration: the continued run keeps its seed, config.yaml keeps recording it.
    result = run_script(work_dir, "--resume", "--output-dir", str(output_dir), "train.max_iter=3")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-8000:]
    summary = json.loads((output_dir / "summary.json").read_text())
    assert summary["iterations"] == 3 and summary["seed"] == seed
    # Its time covers the one iteration it ran, and the summary says so.
    assert summary["start_iter"] == 2
    assert "after 3 iterations (1 of them in this run, from iteration 2) in " in result.stdout
    assert _recorded_seed(output_dir) == seed
    assert f"add train.seed={seed} to repeat this run" in result.stdout
    assert f"note: keeping the seed {seed} that " in result.stdout
    assert "drew seed" not in output

    result = run_script(work_dir, "--output-dir", str(output_dir), "--skip-train")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-8000:]
    assert "after 3 iterations (training skipped)" in result.stdout
    assert "drew seed" not in output
    summary = json.loads((output_dir / "summary.json").read_text())
    assert summary["seed"] == seed  # the evaluated model's
    assert f"seed: {seed} (the evaluated model's" in result.stdout
    assert "to repeat this run" not in result.stdout  # nothing was trained
    assert _recorded_seed(output_dir) == seed
    assert summary["trained"] is False and summary["train_seconds"] is None
    assert summary["eval_seconds"] > 0


def test_skip_train_without_a_model_fails_clearly(work_dir):
    result = run_script(work_dir, "--output-dir", str(work_dir / "empty"), "--skip-train")
    assert result.returncode != 0
    assert "--skip-train: expected a trained model at" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.fixture()
def parsed_run(monkeypatch):
    """``main(argv)`` of the script with ``run`` replaced: returns the arguments run gets."""
    tool = load_script("tools/train_shapes_demo.py")
    calls = []
    monkeypatch.setattr(tool, "run", lambda args, start_time: calls.append(args))

    def parse(argv):
        tool.main(argv)
        assert len(calls) == 1
        return calls.pop()

    return parse


def test_overrides_are_taken_on_both_sides_of_the_options(parsed_run, tmp_path):
    """``train.seed=0 --output-dir X train.max_iter=10`` stopped with "unrecognized arguments:
    train.max_iter=10"."""
    args = parsed_run(["train.seed=0", "--output-dir", str(tmp_path), "train.max_iter=10"])
    assert args.opts == ["train.seed=0", "train.max_iter=10"]
    assert args.output_dir == str(tmp_path)


@pytest.mark.parametrize("option", ["--resume", "--skip-train"])
def test_a_seed_override_gives_way_to_the_recorded_seed_and_is_said(
    parsed_run, tmp_path, capsys, option
):
    """A continued or evaluated run keeps the seed it was trained with: an override rewrote the
    record though a resumed run continues the checkpoint's random states (walkthrough audit)."""
    (tmp_path / "config.yaml").write_text("train: {max_iter: 2, seed: 123}\n")
    args = parsed_run([option, "--output-dir", str(tmp_path), "train.seed=5"])
    assert args.recorded_seed == 123 and args.opts == ["train.seed=5"]
    out = capsys.readouterr().out
    assert "note: ignoring train.seed=5 from the command line: the run being " in out
    assert "trained with the seed 123 that " in out

    args = parsed_run([option, "--output-dir", str(tmp_path)])
    assert args.recorded_seed == 123
    assert "note: keeping the seed 123 that " in capsys.readouterr().out
