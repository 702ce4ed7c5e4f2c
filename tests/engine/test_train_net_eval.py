"""tools/train_net.py evaluation: --eval-only on the shapes configs (results under the run's
output folder, one process vs two), and the weights it evaluates (load_eval_checkpoint: refused
without weights, mismatched heads named, EMA weights)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from detectron2.config import LazyConfig, instantiate

from detr_ext.checkpoint import CheckpointMismatchError
from detr_ext.engine import ModelEMA, eval_checkpoint_path, load_eval_checkpoint
from tests.tool_runs import SHAPES_CONFIGS, load_script, run_tool, tiny_shapes_config


def save_random_weights(project: str, path: Path, **overrides) -> dict:
    cfg = LazyConfig.load(str(SHAPES_CONFIGS[project]))
    cfg.model.update(overrides)
    state = instantiate(cfg.model).state_dict()
    torch.save({"model": state}, path)
    return state


@pytest.mark.parametrize("project", ["detr", "dino"])
def test_eval_only_writes_results_under_train_output_dir(project, tmp_path):
    """The evaluator's files follow train.output_dir, whatever the config's evaluator says
    (dino_shapes copies its default ./output/dino_shapes in; detr_shapes sets none)."""
    weights = tmp_path / "random.pth"
    save_random_weights(project, weights)
    config = tiny_shapes_config(project, tmp_path)
    output_dir = tmp_path / "runs" / "first"
    result = run_tool(
        "train_net.py",
        [
            "--config-file", str(config), "--eval-only",
            f"train.init_checkpoint={weights}", f"train.output_dir={output_dir}",
        ],
        cwd=tmp_path,
        datasets=tmp_path / "datasets",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr[-6000:]
    results_file = output_dir / "inference" / "coco_instances_results.json"
    assert results_file.is_file(), sorted(str(p) for p in tmp_path.rglob("*.json"))
    detections = json.loads(results_file.read_text())
    assert detections and {"image_id", "category_id", "bbox", "score"} <= set(detections[0])
    # Nothing went to the config's own default folder (./output/<project>_shapes).
    assert not (tmp_path / "output").exists()


def test_evaluation_with_two_processes_equals_one_process(tmp_path):
    """--eval-only on 2 gloo processes: the 3 val images split 2 + 1 between the ranks, and
    the main process must evaluate the detections of all of them, once each (the ranks'
    predictions gathered, none duplicated), to the same AP as 1 process."""
    weights = tmp_path / "random.pth"
    save_random_weights("dino", weights)
    config = tiny_shapes_config("dino", tmp_path)
    outputs = {}
    for processes in (1, 2):
        output_dir = tmp_path / f"eval_{processes}"
        result = run_tool(
            "train_net.py",
            [
                "--config-file", str(config), "--eval-only", "--num-gpus", str(processes),
                f"train.init_checkpoint={weights}", f"train.output_dir={output_dir}",
            ],
            cwd=tmp_path,
            datasets=tmp_path / "datasets",
        )  # fmt: skip
        assert result.returncode == 0, result.stdout + result.stderr[-6000:]
        # The logged command line names the port choice the run used, not detectron2's
        # default port (tcp://127.0.0.1:49152 for root), which it did not use.
        logged = (output_dir / "log.txt").read_text()
        assert "dist_url='auto'" in logged and "49152" not in logged
        detections = json.loads(
            (output_dir / "inference" / "coco_instances_results.json").read_text()
        )
        lines = [
            line.split("copypaste: ")[1]
            for line in result.stdout.splitlines()
            if "copypaste: " in line
        ]
        outputs[processes] = (detections, lines)
    (single, single_lines), (double, double_lines) = outputs[1], outputs[2]
    assert {d["image_id"] for d in single} == {d["image_id"] for d in double} and len(
        {d["image_id"] for d in single}
    ) == 3
    assert len(single) == len(double)
    key = lambda d: (d["image_id"], d["category_id"], -d["score"], d["bbox"])  # noqa: E731
    for one, two in zip(sorted(single, key=key), sorted(double, key=key), strict=True):
        assert (one["image_id"], one["category_id"]) == (two["image_id"], two["category_id"])
        assert one["score"] == pytest.approx(two["score"], abs=1e-5)
        assert one["bbox"] == pytest.approx(two["bbox"], abs=1e-3)
    assert len(single_lines) == 3 and single_lines == double_lines  # the AP table's numbers


# Two processes: train_net checks the weights before it starts them (one usage error, not a
# traceback from each process).
@pytest.mark.parametrize("processes", [1, 2])
def test_eval_only_without_weights_is_refused(tmp_path, processes):
    config = tiny_shapes_config("detr", tmp_path)
    output_dir = tmp_path / "run"
    result = run_tool(
        "train_net.py",
        ["--config-file", str(config), "--eval-only", "--num-gpus", str(processes)]
        + [f"train.output_dir={output_dir}"],
        cwd=tmp_path,
        datasets=tmp_path / "datasets",
    )
    assert result.returncode == 2, result.stderr[-3000:]  # a usage error, not a crash
    assert "Traceback" not in result.stderr
    assert "train.init_checkpoint is empty" in result.stderr
    assert "--allow-random-weights" in result.stderr
    assert "or --resume to evaluate the last checkpoint of train.output_dir" in result.stderr
    assert not (output_dir / "inference").exists()  # nothing was evaluated

    # The opt-in is a documented flag.
    parser = load_script("tools/train_net.py").build_parser()
    assert "--allow-random-weights" in parser.format_help()
    assert parser.parse_args(["--eval-only", "--allow-random-weights"]).allow_random_weights


@pytest.mark.parametrize("processes", [1, 2])
@pytest.mark.parametrize("how", ["missing init_checkpoint", "--resume without a checkpoint"])
def test_eval_only_without_its_checkpoint_is_a_usage_error(tmp_path, how, processes):
    config = tiny_shapes_config("detr", tmp_path)
    output_dir = tmp_path / "run"
    arguments = ["--config-file", str(config), "--eval-only", "--num-gpus", str(processes)]
    arguments.append(f"train.output_dir={output_dir}")
    if how == "missing init_checkpoint":
        arguments.append(f"train.init_checkpoint={tmp_path / 'missing.pth'}")
        message = "train.init_checkpoint: expected a checkpoint file, got missing path"
    else:
        arguments.insert(0, "--resume")
        message = "has no 'last_checkpoint' file (no run saved a checkpoint there)"
    result = run_tool("train_net.py", arguments, cwd=tmp_path, datasets=tmp_path / "datasets")
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and message in result.stderr
    assert not (output_dir / "inference").exists()


def test_eval_checkpoint_path(tmp_path):
    """What train_net checks before it starts several processes, without building a model."""
    cfg = LazyConfig.load(str(SHAPES_CONFIGS["detr"]))
    cfg.train.init_checkpoint = ""
    with pytest.raises(ValueError, match="train.init_checkpoint is empty"):
        eval_checkpoint_path(cfg)
    assert eval_checkpoint_path(cfg, allow_random_weights=True) == ""
    cfg.train.init_checkpoint = str(tmp_path / "missing.pth")
    with pytest.raises(FileNotFoundError, match="train.init_checkpoint: .* missing path"):
        eval_checkpoint_path(cfg, allow_random_weights=True)
    (tmp_path / "weights.pth").write_bytes(b"")
    cfg.train.init_checkpoint = str(tmp_path / "weights.pth")
    assert eval_checkpoint_path(cfg) == str(tmp_path / "weights.pth")
    cfg.train.init_checkpoint = "https://example.com/model.pth"  # fetched when loaded
    assert eval_checkpoint_path(cfg) == "https://example.com/model.pth"
    cfg.train.output_dir = str(tmp_path / "run")  # --resume: the run's last checkpoint
    with pytest.raises(FileNotFoundError, match="has no 'last_checkpoint' file"):
        eval_checkpoint_path(cfg, resume=True)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "model_0000009.pth").write_bytes(b"")
    (tmp_path / "run" / "last_checkpoint").write_text("model_0000009.pth")
    assert eval_checkpoint_path(cfg, resume=True) == str(tmp_path / "run" / "model_0000009.pth")


def test_load_eval_checkpoint_errors(tmp_path):
    cfg = LazyConfig.load(str(SHAPES_CONFIGS["detr"]))
    model = instantiate(cfg.model)
    cfg.train.init_checkpoint = ""
    with pytest.raises(ValueError, match="train.init_checkpoint is empty"):
        load_eval_checkpoint(cfg, model)
    assert load_eval_checkpoint(cfg, model, allow_random_weights=True) is None

    cfg.train.init_checkpoint = str(tmp_path / "missing.pth")
    with pytest.raises(FileNotFoundError, match="train.init_checkpoint: .* missing path"):
        load_eval_checkpoint(cfg, model)

    # A class head trained for 5 classes does not fit the config's 3: an error, not a
    # warning and a randomly initialised head.
    other = save_random_weights("detr", tmp_path / "five_classes.pth", num_classes=5)
    cfg.train.init_checkpoint = str(tmp_path / "five_classes.pth")
    ours = list(model.state_dict()["class_embed.weight"].shape)
    theirs = list(other["class_embed.weight"].shape)
    with pytest.raises(CheckpointMismatchError) as info:
        load_eval_checkpoint(cfg, model)
    message = str(info.value)
    assert f"class_embed.weight: {theirs} vs {ours}" in message
    assert "model.num_classes" in message and "num_classes=3" in message


def test_load_eval_checkpoint_with_ema_weights_only(tmp_path):
    """train.ema.use_ema_weights_for_eval_only evaluates the EMA weights alone; without EMA
    weights to evaluate (EMA disabled, or a checkpoint without them) it evaluated the model
    weights as if they were the EMA's, saying nothing."""
    cfg = LazyConfig.load(str(SHAPES_CONFIGS["detr"]))
    model = instantiate(cfg.model)
    state = model.state_dict()
    torch.save({"model": state}, tmp_path / "plain.pth")
    torch.save({"model": state, "ema": ModelEMA(model).state_dict()}, tmp_path / "ema.pth")
    cfg.train.ema.use_ema_weights_for_eval_only = True
    cfg.train.ema.enabled = False
    cfg.train.init_checkpoint = str(tmp_path / "ema.pth")
    with pytest.raises(ValueError, match="needs train.ema.enabled=True too"):
        load_eval_checkpoint(cfg, model)
    cfg.train.ema.enabled = True
    assert isinstance(load_eval_checkpoint(cfg, model), ModelEMA)
    cfg.train.init_checkpoint = str(tmp_path / "plain.pth")
    with pytest.raises(ValueError, match=r"plain\.pth' has no 'ema' state \(it has \[\]\)"):
        load_eval_checkpoint(cfg, model)
    cfg.train.ema.use_ema_weights_for_eval_only = False  # then the model weights, with a warning
    assert load_eval_checkpoint(cfg, model) is None


def test_eval_only_resume_needs_a_run_with_a_checkpoint(tmp_path):
    cfg = LazyConfig.load(str(SHAPES_CONFIGS["detr"]))
    model = instantiate(cfg.model)
    cfg.train.output_dir = str(tmp_path)
    with pytest.raises(FileNotFoundError, match="has no 'last_checkpoint' file"):
        load_eval_checkpoint(cfg, model, resume=True)
    (tmp_path / "last_checkpoint").write_text("model_0000009.pth")
    with pytest.raises(FileNotFoundError, match="names 'model_0000009.pth', which does not"):
        load_eval_checkpoint(cfg, model, resume=True)
    torch.save({"model": model.state_dict()}, tmp_path / "model_0000009.pth")
    assert load_eval_checkpoint(cfg, model, resume=True) is None  # loaded; no EMA configured
