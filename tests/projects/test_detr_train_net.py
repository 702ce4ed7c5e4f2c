"""tools/train_net.py with projects/detr/configs/detr_shapes.py on CPU, in subprocesses: train
two iterations with a COCO evaluation at the end, evaluate the checkpoint (--eval-only), then
resume to a third iteration. The shapes dataset is shrunk to a few images in a temp dir."""

import json
from pathlib import Path

import pytest

from tests.tool_runs import TINY_SHAPES_CONFIG, run_tool

REPO_ROOT = Path(__file__).resolve().parents[2]

CONFIG = (
    TINY_SHAPES_CONFIG
    + """train.log_period = 1
train.checkpointer.period = 1
"""
)


def run_train_net(config: Path, datasets: Path, *args: str) -> str:
    result = run_tool(
        "train_net.py", ["--config-file", str(config), *args], cwd=config.parent, datasets=datasets
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"train_net failed:\n{output[-8000:]}"
    return output


def metric_records(output_dir: Path) -> list[dict]:
    lines = (output_dir / "metrics.json").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def loss_iterations(output_dir: Path) -> list[int]:
    return [record["iteration"] for record in metric_records(output_dir) if "total_loss" in record]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    work_dir = tmp_path_factory.mktemp("detr_train_net")
    config = work_dir / "detr_shapes_tiny.py"
    base = REPO_ROOT / "projects" / "detr" / "configs" / "detr_shapes.py"
    config.write_text(CONFIG.format(base=str(base)))
    return work_dir, config


def test_train_eval_resume(run_dir):
    work_dir, config = run_dir
    datasets, output_dir = work_dir / "datasets", work_dir / "output"

    output = run_train_net(config, datasets, f"train.output_dir={output_dir}")
    assert "Starting training from iteration 0" in output
    assert "Evaluation results for bbox" in output
    assert (output_dir / "model_final.pth").is_file()
    assert loss_iterations(output_dir) == [0, 1]
    assert any("bbox/AP" in record for record in metric_records(output_dir))

    output = run_train_net(
        config,
        datasets,
        "--eval-only",
        f"train.output_dir={output_dir / 'eval'}",
        f"train.init_checkpoint={output_dir / 'model_final.pth'}",
    )
    assert "'bbox': {'AP':" in output

    output = run_train_net(
        config, datasets, "--resume", f"train.output_dir={output_dir}", "train.max_iter=3"
    )
    assert "Starting training from iteration 2" in output
    assert loss_iterations(output_dir) == [0, 1, 2]
