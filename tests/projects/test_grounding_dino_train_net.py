"""tools/train_net.py with projects/grounding_dino/configs/grounding_dino_shapes.py on the CPU,
in a subprocess: two training iterations on colour and category prompts, then both
evaluations (box AP with the category prompt on shapes_val, colour grounding recall on
shapes_grounding_val, through ``dataloader.extra_tests``); then tools/demo.py with --prompt
on the trained weights. The model is narrowed and its text encoder is a tiny random BERT
(the packaged tokenizer), so nothing is downloaded."""

import json
from pathlib import Path

import pytest

from tests.tool_runs import run_tool

REPO_ROOT = Path(__file__).resolve().parents[2]
BASE = REPO_ROOT / "projects" / "grounding_dino" / "configs" / "grounding_dino_shapes.py"

CONFIG = f"""
from detectron2.config import LazyConfig

from detr_ext.data.datasets import register_shapes, register_shapes_grounding

_base = LazyConfig.load({str(BASE)!r})
# $DETR_EXT_DATASETS points at a temp dir; a few images per split keep the run short.
register_shapes(root=None, num_train=4, num_val=3, seed=0, replace=True)
register_shapes_grounding(root=None, num_train=4, num_val=3, seed=0, replace=True)

model = _base.model
dataloader = _base.dataloader
optimizer = _base.optimizer
lr_multiplier = _base.lr_multiplier
train = _base.train

model.text_encoder.config_overrides = {{
    "num_hidden_layers": 1, "hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 64
}}
model.num_queries = 20
model.select_box_nums_for_evaluation = 20
model.transformer.encoder.num_layers = 1
model.transformer.decoder.num_layers = 2
dataloader.train.total_batch_size = 2
dataloader.train.num_workers = 0
dataloader.test.num_workers = 0
train.max_iter = 2
train.log_period = 1
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    work_dir = tmp_path_factory.mktemp("grounding_train_net")
    config = work_dir / "grounding_dino_shapes_tiny.py"
    config.write_text(CONFIG)
    output_dir = work_dir / "output"
    result = run_tool(
        "train_net.py",
        ["--config-file", str(config), f"train.output_dir={output_dir}"],
        cwd=work_dir,
        datasets=work_dir / "datasets",
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"train_net failed:\n{output[-8000:]}"
    return work_dir, config, output_dir, output


def test_trains_and_evaluates_box_ap_and_grounding_recall(trained):
    _, _, output_dir, output = trained
    assert "Starting training from iteration 0" in output
    records = [json.loads(line) for line in (output_dir / "metrics.json").read_text().splitlines()]
    assert [r["iteration"] for r in records if "total_loss" in r] == [0, 1]
    assert any("loss_class_dn" in r for r in records)
    evaluated = [r for r in records if "bbox/AP" in r]
    assert evaluated and "grounding/R@1" in evaluated[-1] and "grounding/R@5" in evaluated[-1]
    assert (output_dir / "inference" / "coco_instances_results.json").is_file()


def test_demo_with_a_prompt_writes_phrases(trained):
    work_dir, config, output_dir, _ = trained
    images = work_dir / "datasets" / "shapes" / "val"
    demo_dir = work_dir / "demo"
    result = run_tool(
        "demo.py",
        [
            "--config-file", str(config), "--weights", str(output_dir / "model_final.pth"),
            "--input", str(images), "--output", str(demo_dir),
            "--prompt", "red circle . triangle", "--confidence-threshold", "0",
        ],
        cwd=work_dir,
        datasets=work_dir / "datasets",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr[-6000:]
    records = json.loads((demo_dir / "detections.json").read_text())
    assert len(records) == 3 and all((demo_dir / r["visualization"]).is_file() for r in records)
    detections = [d for r in records for d in r["detections"]]
    assert detections and {d["phrase"] for d in detections} <= {"red circle", "triangle"}
    # A custom prompt's phrases are not the dataset's categories.
    assert all(d["category_id"] is None and d["category_name"] is None for d in detections)


def test_demo_refuses_a_prompt_without_phrases_before_any_image(trained):
    work_dir, config, output_dir, _ = trained
    demo_dir = work_dir / "demo_empty_prompt"
    result = run_tool(
        "demo.py",
        [
            "--config-file", str(config), "--weights", str(output_dir / "model_final.pth"),
            "--input", str(work_dir / "datasets" / "shapes" / "val"),
            "--output", str(demo_dir), "--prompt", " . ",
        ],
        cwd=work_dir,
        datasets=work_dir / "datasets",
    )  # fmt: skip
    assert result.returncode == 1
    assert "--prompt: parse_prompt: the prompt ' . ' has no phrase" in result.stderr
    assert not (demo_dir / "detections.json").exists()  # stopped before the first image
