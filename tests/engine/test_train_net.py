"""tools/train_net.py end to end on CPU: train, resume, evaluate (in subprocesses)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
HELPERS_DIR = Path(__file__).resolve().parent

CONFIG = """
from detectron2.config import LazyCall as L
from detectron2.data import (
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)

from detr_ext.config import get_config
from tiny_project import TinyEvaluator, TinyMapper, TinyModel

train = get_config("common/train.py").train
optimizer = get_config("common/optim.py").AdamW
lr_multiplier = get_config("common/coco_schedule.py").lr_multiplier_12ep

model = L(TinyModel)(in_features=4)
dataloader = dict(
    train=L(build_detection_train_loader)(
        dataset=L(get_detection_dataset_dicts)(names="tiny_train", filter_empty=False),
        mapper=L(TinyMapper)(),
        total_batch_size=4,
        aspect_ratio_grouping=False,
        num_workers=0,
    ),
    test=L(build_detection_test_loader)(
        dataset=L(get_detection_dataset_dicts)(names="tiny_test", filter_empty=False),
        mapper=L(TinyMapper)(),
        num_workers=0,
    ),
    evaluator=L(TinyEvaluator)(),
)

optimizer.lr = 1e-2
train.device = "cpu"
train.max_iter = 4
train.checkpointer = dict(period=2, max_to_keep=10)
train.eval_period = 0
train.log_period = 1
train.seed = 0
train.clip_grad.enabled = True
train.ema.enabled = True
train.ema.decay = 0.5
"""


def run_train_net(config: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HELPERS_DIR), env.get("PYTHONPATH")]))
    env["CUDA_VISIBLE_DEVICES"] = ""
    env.setdefault("OMP_NUM_THREADS", "1")
    cmd = [sys.executable, str(REPO_ROOT / "tools" / "train_net.py"), "--config-file", str(config)]
    # Run from elsewhere: the script must find detr_ext on its own.
    result = subprocess.run(
        [*cmd, *args], cwd=config.parent, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, f"train_net failed:\n{result.stdout}\n{result.stderr[-6000:]}"
    return result


def metric_iterations(output_dir: Path) -> list[int]:
    lines = (output_dir / "metrics.json").read_text().splitlines()
    records = [json.loads(line) for line in lines if line.strip()]
    return [record["iteration"] for record in records if "total_loss" in record]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A 4-iteration run; returns (config path, output dir)."""
    work_dir = tmp_path_factory.mktemp("train_net")
    config = work_dir / "tiny_config.py"
    config.write_text(CONFIG)
    output_dir = work_dir / "output"
    run_train_net(config, f"train.output_dir={output_dir}")
    return config, output_dir


def test_train_writes_metrics_config_and_checkpoints(trained_run):
    _, output_dir = trained_run
    assert (output_dir / "config.yaml").is_file()
    assert (output_dir / "model_0000001.pth").is_file()  # checkpoint period 2
    assert (output_dir / "model_final.pth").is_file()
    assert metric_iterations(output_dir) == [0, 1, 2, 3]
    records = [
        json.loads(line)
        for line in (output_dir / "metrics.json").read_text().split("\n")
        if line.strip()
    ]
    assert any("tiny/mse" in record and "ema/tiny/mse" in record for record in records)


def test_resume_continues_from_last_iteration_then_eval_only(trained_run):
    config, output_dir = trained_run
    result = run_train_net(config, "--resume", f"train.output_dir={output_dir}", "train.max_iter=6")
    assert "Starting training from iteration 4" in result.stdout + result.stderr
    assert metric_iterations(output_dir) == [0, 1, 2, 3, 4, 5]

    result = run_train_net(
        config,
        "--eval-only",
        f"train.output_dir={output_dir}",
        f"train.init_checkpoint={output_dir / 'model_final.pth'}",
    )
    assert "'tiny': {'mse':" in result.stdout
    assert "'ema': {'tiny':" in result.stdout
