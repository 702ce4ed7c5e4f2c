"""tools/train_net.py end to end on CPU: train, resume (hyperparameters, data stream), gradient
accumulation across processes, ports, help, registration warnings (in subprocesses). Its
evaluation: test_train_net_eval.py."""

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from detectron2.config import instantiate

from detr_ext.config import get_config
from detr_ext.engine import recorded_seed
from tests.tool_runs import load_script, run_tool, tiny_shapes_config

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

    # --eval-only --resume evaluates the run's last checkpoint (it was ignored: an empty
    # train.init_checkpoint was refused).
    result = run_train_net(config, "--eval-only", "--resume", f"train.output_dir={output_dir}")
    assert f"evaluating {output_dir / 'model_final.pth'}, the run's last checkpoint" in (
        result.stdout + result.stderr
    )
    assert "'tiny': {'mse':" in result.stdout


def test_resume_takes_hyperparameters_from_the_config(trained_run, tmp_path):
    """--resume with a lower lr, another weight decay and EMA decay (what NonFiniteTrainingError
    advises): the resumed steps use them, not the checkpoint's (detectron2 restores the
    optimizer's param groups and the scheduler's base lr from the checkpoint), with a warning
    naming each change. A checkpoint past train.max_iter is an error before anything runs."""
    config, _ = trained_run
    run_dir = tmp_path / "run"
    run_train_net(config, f"train.output_dir={run_dir}")  # lr 1e-2, ema decay 0.5, 4 steps
    result = run_train_net(
        config,
        "--resume",
        f"train.output_dir={run_dir}",
        "train.max_iter=6",
        "optimizer.lr=1e-3",
        "optimizer.weight_decay=0.05",
        "train.ema.decay=0.9",
    )
    log = result.stdout + result.stderr
    assert "Resuming with the config's optimizer settings, not the checkpoint's" in log
    assert "lr: 0.01 -> 0.001 (all " in log and "weight_decay: 0.0001 -> 0.05 (" in log
    assert (
        "EMA decay: the checkpoint's is 0.5, this EMA's (the config's train.ema.decay) 0.9" in log
    )
    final = torch.load(run_dir / "model_final.pth", weights_only=False)
    groups = final["trainer"]["optimizer"]["param_groups"]
    assert {group["initial_lr"] for group in groups} == {1e-3}
    assert {group["weight_decay"] for group in groups} == {0.0, 0.05}  # no decay on the norm
    assert final["ema"]["decay"] == 0.9
    lines = (run_dir / "metrics.json").read_text().splitlines()
    lrs = {r["iteration"]: r["lr"] for r in map(json.loads, lines) if "lr" in r}
    multiplier = instantiate(get_config("common/coco_schedule.py").lr_multiplier_12ep)
    for iteration in (4, 5):  # lr = base lr x the schedule at iter / max_iter
        assert lrs[iteration] == pytest.approx(1e-3 * multiplier(iteration / 6), rel=1e-6)

    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HELPERS_DIR), env.get("PYTHONPATH")]))
    cmd = [sys.executable, str(REPO_ROOT / "tools" / "train_net.py"), "--config-file", str(config)]
    short = subprocess.run(
        [*cmd, "--resume", f"train.output_dir={run_dir}", "train.max_iter=3"],
        cwd=config.parent, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert short.returncode != 0
    assert "model_final.pth was saved after iteration 6 (0-based 5), past train.max_iter=3" in (
        short.stderr
    )
    assert "Start inference" not in short.stdout + short.stderr  # refused before evaluating


@pytest.mark.parametrize("processes, eval_period", [(1, 0), (2, 2)])
def test_resumed_run_continues_the_data_stream(trained_run, tmp_path, processes, eval_period):
    """A run stopped after 4 iterations and resumed to 7 ends with the weights, EMA and
    optimizer state of the same run done in one go: iterations 4-6 read the images the
    uninterrupted run reads there (the second and third epochs of tiny_train's 16 items), not
    those of iterations 0-2 again, as detectron2's TrainingSampler would have them. The resumed
    run's own train.seed=5 does not change the stream: the checkpoint's seed continues. With 2
    processes (gloo DDP), each reads its share of the stream from the checkpoint's position.
    Evaluations at the checkpoint iterations (eval_period 2) leave the generators as the
    checkpoint recorded them (the test loader drew from torch's: the weights differed)."""
    config, _ = trained_run
    # Training draws from torch's generator (model.noise), as DINO's denoising does.
    launch = ["--num-gpus", str(processes)]
    common = [f"train.eval_period={eval_period}", "model.noise=0.5"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    run_train_net(config, *launch, f"train.output_dir={straight}", "train.max_iter=7", *common)
    run_train_net(config, *launch, f"train.output_dir={resumed}", "train.max_iter=4", *common)
    first = torch.load(resumed / "model_final.pth", weights_only=False)["data_stream"]
    assert first["position"] == 16 and first["size"] == 16 and first["total_batch_size"] == 4
    result = run_train_net(
        config,
        *launch,
        "--resume",
        f"train.output_dir={resumed}",
        "train.max_iter=7",
        "train.seed=5",
        *common,
    )
    assert "Continuing the training data stream of the checkpoint: index 16" in result.stdout

    expected = torch.load(straight / "model_final.pth", weights_only=False)
    got = torch.load(resumed / "model_final.pth", weights_only=False)
    assert got["data_stream"] == {**expected["data_stream"], "position": 28}
    assert expected["data_stream"]["position"] == 28
    for part in ("model", "ema"):
        assert expected[part].keys() == got[part].keys()
        for key, value in expected[part].items():
            torch.testing.assert_close(got[part][key], value, rtol=0, atol=0, msg=key)
    exp_state = expected["trainer"]["optimizer"]["state"]
    got_state = got["trainer"]["optimizer"]["state"]
    for index, entry in exp_state.items():
        for name, value in entry.items():
            torch.testing.assert_close(got_state[index][name], value, rtol=0, atol=0)


def test_evaluation_during_ddp_training_scores_the_saved_model(trained_run, tmp_path):
    """With 2 processes each keeps its own BatchNorm statistics (broadcast_buffers=False), and
    each evaluated its share of the test images with them: the logged score was not the saved
    model's. Now it equals --eval-only of model_final.pth (model and EMA). --eval-only with more
    processes than test images, and training with broadcast_buffers=True, finish instead of
    waiting for a buffer broadcast that a process without images never joins."""
    config, _ = trained_run
    out = tmp_path / "ddp"
    run_train_net(config, "--num-gpus", "2", f"train.output_dir={out}", "train.eval_period=4")
    logged = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    logged = [record for record in logged if "tiny/mse" in record][-1]
    assert logged["tiny/count"] == 6.0

    weights = f"train.init_checkpoint={out / 'model_final.pth'}"
    alone = run_train_net(config, "--eval-only", weights, f"train.output_dir={tmp_path / 'e1'}")
    results = ast.literal_eval(alone.stdout.strip().splitlines()[-1])
    assert results["tiny"]["count"] == 6.0
    assert logged["tiny/mse"] == pytest.approx(results["tiny"]["mse"], rel=1e-6)
    assert logged["ema/tiny/mse"] == pytest.approx(results["ema"]["tiny"]["mse"], rel=1e-6)

    one_image = "dataloader.test.dataset.names=tiny_one"
    # The evaluated run's config.yaml records another seed than the config file's (0): a
    # 2-process evaluation keeps it (it drew or took the config's and rewrote the record).
    (tmp_path / "e2").mkdir()
    (tmp_path / "e2" / "config.yaml").write_text("train:\n  seed: 4321\n")
    pair = run_train_net(
        config, "--eval-only", "--num-gpus", "2", weights, one_image,
        f"train.output_dir={tmp_path / 'e2'}",
    )  # fmt: skip
    printed = [line for line in pair.stdout.splitlines() if line.startswith("{")]
    assert len(printed) == 1 and ast.literal_eval(printed[0])["tiny"]["count"] == 1.0
    assert "keeping seed 4321" in pair.stdout + pair.stderr
    assert recorded_seed(tmp_path / "e2" / "config.yaml") == 4321
    run_train_net(
        config, "--num-gpus", "2", one_image, "train.ddp.broadcast_buffers=True",
        "train.max_iter=2", "train.eval_period=2", f"train.output_dir={tmp_path / 'bb'}",
    )  # fmt: skip


def test_gradient_accumulation_on_two_processes_equals_one_large_batch(trained_run, tmp_path):
    """2 gloo processes x 2 images x 2 accumulated batches per step train like 1 process with
    batches of 8: the same 8 images per step (the data stream counts the accumulated
    batches), one gradient all-reduce per step, the same weights after 3 steps."""
    config, _ = trained_run
    common = ["train.max_iter=3", "model.norm=False"]
    accumulated, large = tmp_path / "accumulated", tmp_path / "large"
    run_train_net(
        config,
        "--num-gpus",
        "2",
        f"train.output_dir={accumulated}",
        "train.grad_accumulation_steps=2",
        *common,
    )
    run_train_net(
        config, f"train.output_dir={large}", "dataloader.train.total_batch_size=8", *common
    )
    expected = torch.load(large / "model_final.pth", weights_only=False)
    got = torch.load(accumulated / "model_final.pth", weights_only=False)
    assert expected["data_stream"]["position"] == got["data_stream"]["position"] == 24
    for part in ("model", "ema"):
        for key, value in expected[part].items():
            torch.testing.assert_close(got[part][key], value, rtol=1e-5, atol=1e-6, msg=key)


def test_one_machine_runs_take_a_free_port_unless_told_otherwise():
    """detectron2's default --dist-url is one port per user: a second multi-process run of the
    same user on the machine (another experiment; tests next to a training) failed on it."""
    train_net = load_script("tools/train_net.py")
    parser = train_net.build_parser()
    args = parser.parse_args(["--num-gpus", "2"])
    assert train_net.dist_url_for(args, parser) == "auto"
    args = parser.parse_args(["--num-gpus", "2", "--dist-url", "tcp://127.0.0.1:12345"])
    assert train_net.dist_url_for(args, parser) == "tcp://127.0.0.1:12345"
    args = parser.parse_args(["--num-machines", "2", "--machine-rank", "1"])
    assert train_net.dist_url_for(args, parser) == parser.get_default("dist_url")


def test_help_shows_this_projects_usage():
    """The examples were detectron2's yacs ones (`MODEL.WEIGHTS /path SOLVER.BASE_LR 0.001`),
    which fail with a hydra parse error here, and --resume pointed to DefaultTrainer."""
    text = " ".join(load_script("tools/train_net.py").build_parser().format_help().split())
    assert "MODEL.WEIGHTS" not in text and "SOLVER.BASE_LR" not in text
    assert "optimizer.lr=5e-5 train.max_iter=20000" in text
    assert "training data stream" in text and "with --eval-only, evaluate that checkpoint" in text
    assert "DefaultTrainer" not in text


OWN_DATA_CONFIG = """
from detr_ext.data.datasets import register_coco_format_dataset

register_coco_format_dataset("own_val_warned", {json!r}, {images!r})
dataloader.test.dataset.names = "own_val_warned"
"""


def test_registration_warnings_reach_the_runs_log(tmp_path, monkeypatch):
    """A config registers its datasets when it is loaded, before log.txt exists: the cleaning
    warnings (here: a box past its image, clipped) were on the console only."""
    from PIL import Image

    monkeypatch.setenv("DETR_EXT_CACHE", str(tmp_path / "cache"))
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (40, 30)).save(images / "a.png")
    data = {
        "images": [{"id": 1, "file_name": "a.png", "height": 30, "width": 40}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [30, 5, 20, 10]}],
        "categories": [{"id": i, "name": f"c{i}"} for i in (1, 2, 3)],
    }
    json_file = tmp_path / "own.json"
    json_file.write_text(json.dumps(data))
    config = tiny_shapes_config("detr", tmp_path)
    config.write_text(
        config.read_text() + OWN_DATA_CONFIG.format(json=str(json_file), images=str(images))
    )
    output_dir = tmp_path / "run"
    result = run_tool(
        "train_net.py",
        [
            "--config-file", str(config), "--eval-only", "--allow-random-weights",
            f"train.output_dir={output_dir}",
        ],
        cwd=tmp_path,
        datasets=tmp_path / "datasets",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr[-6000:]
    log = (output_dir / "log.txt").read_text()
    assert "Dataset 'own_val_warned' was repaired or warned about" in log
    assert "registered the cleaned copy" in log and str(json_file) in log
