"""A new run never replaces another run's checkpoints unasked: ``setup`` (every entry point)
and ``train_net.py`` (before launching) refuse a new run in a ``train.output_dir`` whose
``last_checkpoint`` names a checkpoint; ``--resume``, ``--eval-only`` and ``--overwrite`` go on.
detectron2 alone rewrote config.yaml and replaced the checkpoints as the new run saved."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from detr_ext.engine import OutputDirInUseError, check_new_run_output_dir, defaults
from detr_ext.engine.output_dir import set_aside_earlier_run
from tests.tool_runs import REPO_ROOT, load_script

DINO_SHAPES = REPO_ROOT / "projects" / "dino" / "configs" / "dino_shapes.py"


def _earlier_run(output_dir):
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "last_checkpoint").write_text("model_0000003.pth")
    (output_dir / "config.yaml").write_text("train:\n  seed: 11\n")


def test_check_new_run_output_dir(tmp_path):
    assert check_new_run_output_dir(tmp_path / "missing") is None
    assert check_new_run_output_dir(tmp_path) is None  # empty: nothing to replace
    (tmp_path / "last_checkpoint").write_text("\n")
    assert check_new_run_output_dir(tmp_path) is None  # names no checkpoint
    _earlier_run(tmp_path)
    with pytest.raises(OutputDirInUseError) as info:
        check_new_run_output_dir(tmp_path)
    assert str(info.value) == (
        f"train.output_dir={tmp_path} holds the checkpoints of an earlier run (last: "
        f"{tmp_path / 'model_0000003.pth'}); a new run there would replace them, its config.yaml "
        "and its metrics. Expected --resume to continue that run, another output directory for "
        "a new one, or --overwrite to replace it."
    )
    assert check_new_run_output_dir(tmp_path, overwrite=True) == "model_0000003.pth"


def test_set_aside_earlier_run_moves_what_a_new_run_would_resume_or_mix(tmp_path):
    assert set_aside_earlier_run(tmp_path / "missing") is None
    assert set_aside_earlier_run(tmp_path) is None  # nothing of a run there
    run_files = ["last_checkpoint", "model_0000003.pth", "model_final.pth", "metrics.json"]
    run_files += ["events.out.tfevents.1.host", "config.yaml"]
    for name in [*run_files, "log.txt", "log.txt.rank1", "notes.md"]:
        (tmp_path / name).write_text(name)
    (tmp_path / "inference").mkdir()
    (tmp_path / "inference" / "coco_instances_results.json").write_text("[]")
    aside = Path(set_aside_earlier_run(tmp_path))
    assert aside.parent == tmp_path and aside.name.startswith("replaced_")
    assert sorted(p.name for p in aside.iterdir()) == sorted([*run_files, "inference"])
    assert (aside / "model_final.pth").read_text() == "model_final.pth"  # moved, not lost
    left = sorted(p.name for p in tmp_path.iterdir() if p != aside)
    assert left == ["log.txt", "log.txt.rank1", "notes.md"]  # logs go on, other files stay
    (tmp_path / "last_checkpoint").write_text("model_final.pth")
    again = Path(set_aside_earlier_run(tmp_path))  # within the same second: its own folder
    assert again != aside and (again / "last_checkpoint").exists()


@pytest.mark.parametrize(
    "flags, allowed",
    [
        ({}, False),
        ({"resume": True}, True),
        ({"eval_only": True}, True),
        ({"overwrite": True}, True),
    ],
)
def test_setup_refuses_a_new_run_over_an_earlier_one(tmp_path, monkeypatch, flags, allowed):
    _earlier_run(tmp_path)
    written = []
    monkeypatch.setattr(defaults, "default_setup", lambda cfg, args: written.append(cfg))
    args = argparse.Namespace(
        config_file=str(DINO_SHAPES), opts=[f"train.output_dir={tmp_path}"], **flags
    )
    if not allowed:
        with pytest.raises(OutputDirInUseError, match="holds the checkpoints of an earlier run"):
            defaults.setup(args)
        assert written == []  # refused before default_setup rewrites config.yaml
        return
    defaults.setup(args)
    assert len(written) == 1
    log = (tmp_path / "log.txt").read_text()  # setup's "detr_ext" logger writes there
    said = f"This new run replaces the run in {tmp_path} (its last checkpoint was "
    assert (said in log) == (flags == {"overwrite": True})
    # --overwrite set the earlier run aside: nothing left to resume from (an interrupted new
    # run was resumed from the earlier run's checkpoint) or to append metrics to.
    (aside,) = tmp_path.glob("replaced_*") if flags == {"overwrite": True} else [None]
    if aside is not None:
        assert sorted(p.name for p in aside.iterdir()) == ["config.yaml", "last_checkpoint"]
        assert not (tmp_path / "last_checkpoint").exists()


@pytest.mark.parametrize("processes", [1, 2])
def test_train_net_refuses_with_a_message(tmp_path, processes):
    """Several processes: checked before launching. One: setup() refuses in this process (the
    config is loaded once: loading it twice ran a config's own dataset registration twice)."""
    _earlier_run(tmp_path)
    command = [sys.executable, str(REPO_ROOT / "tools" / "train_net.py"), "--config-file"]
    command += [str(DINO_SHAPES), "--num-gpus", str(processes), f"train.output_dir={tmp_path}"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "holds the checkpoints of an earlier run" in result.stderr
    assert "Traceback" not in result.stderr
    assert (tmp_path / "config.yaml").read_text() == "train:\n  seed: 11\n"  # untouched


@pytest.mark.parametrize("continuing", ["--resume", "--eval-only"])
def test_train_net_refuses_overwrite_with_a_continued_run(tmp_path, continuing):
    """--overwrite with --resume / --eval-only was silently ignored."""
    command = [sys.executable, str(REPO_ROOT / "tools" / "train_net.py"), "--config-file"]
    command += [str(DINO_SHAPES), "--overwrite", continuing, f"train.output_dir={tmp_path}"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-3000:]
    assert f"--overwrite starts a new run: expected it without {continuing}, got both" in (
        result.stderr
    )


def test_the_demo_replaces_its_earlier_run_and_says_so(tmp_path, capsys):
    demo = load_script("tools/train_shapes_demo.py")
    args = demo.parse_arguments(["--output-dir", str(tmp_path)])
    assert demo.replace_earlier_run(args) is True
    assert capsys.readouterr().out == ""  # nothing there yet
    _earlier_run(tmp_path)
    assert demo.replace_earlier_run(args) is True
    assert f"note: {tmp_path} holds an earlier run (last checkpoint model_0000003.pth)" in (
        capsys.readouterr().out
    )
    resume = demo.parse_arguments(["--output-dir", str(tmp_path), "--resume"])
    demo.replace_earlier_run(resume)
    assert capsys.readouterr().out == ""


def test_evaluating_a_run_keeps_its_config_yaml(tmp_path):
    """--eval-only (and the demo's --skip-train) in a run's folder: detectron2's default_setup
    replaced the run's config.yaml (its max_iter, schedule) by the evaluation's config."""
    _earlier_run(tmp_path)
    run_record = "train:\n  max_iter: 6\n  seed: 11\n"
    (tmp_path / "config.yaml").write_text(run_record)
    args = argparse.Namespace(
        config_file=str(DINO_SHAPES), opts=[f"train.output_dir={tmp_path}"], eval_only=True
    )
    cfg = defaults.setup(args)
    assert (tmp_path / "config.yaml").read_text() == run_record
    evaluation = (tmp_path / "inference" / "config.yaml").read_text()
    assert f"max_iter: {cfg.train.max_iter}" in evaluation and "seed: 11" in evaluation
    # A folder without a run's config.yaml gets the evaluation's, as before.
    fresh = tmp_path / "fresh"
    args.opts = [f"train.output_dir={fresh}"]
    defaults.setup(args)
    assert (fresh / "config.yaml").is_file() and not (fresh / "inference").exists()
