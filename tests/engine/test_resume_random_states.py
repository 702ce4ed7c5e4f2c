"""--resume puts every process's random generators back where the checkpoint left them
(``detr_ext.engine.random_states``): augmentations drawn in the training process and noise
drawn by the model continue exactly, instead of replaying those of iteration 0."""

from __future__ import annotations

import pytest
import torch

from tests.engine.test_train_net import CONFIG, run_train_net

# The tiny project with numpy jitter in its mapper (an augmentation) and torch noise in its
# model (as DINO's denoising queries); num_workers=0.
RANDOM_CONFIG = CONFIG.replace(
    "mapper=L(TinyMapper)(),\n        total_batch_size",
    "mapper=L(TinyMapper)(jitter=0.5),\n        total_batch_size",
).replace("model = L(TinyModel)(in_features=4)", "model = L(TinyModel)(in_features=4, noise=0.5)")


def load(path):
    return torch.load(path, weights_only=False)


@pytest.mark.parametrize("processes", [1, 2])
def test_resumed_run_with_random_augmentation_and_noise_equals_the_uninterrupted_one(
    tmp_path, processes
):
    assert "TinyMapper)(jitter=0.5)" in RANDOM_CONFIG and "noise=0.5" in RANDOM_CONFIG
    config = tmp_path / "tiny_random.py"
    config.write_text(RANDOM_CONFIG)
    launch = ["--num-gpus", str(processes)]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    run_train_net(config, *launch, f"train.output_dir={straight}", "train.max_iter=6")
    run_train_net(config, *launch, f"train.output_dir={resumed}", "train.max_iter=2")
    saved = load(resumed / "model_final.pth")["random_states"]["per_process"]
    assert len(saved) == processes
    run_train_net(config, *launch, "--resume", f"train.output_dir={resumed}", "train.max_iter=6")

    expected, got = load(straight / "model_final.pth"), load(resumed / "model_final.pth")
    for part in ("model", "ema"):
        for key, value in expected[part].items():
            torch.testing.assert_close(got[part][key], value, rtol=0, atol=0, msg=key)
    for index, state in enumerate(expected["random_states"]["per_process"]):
        assert torch.equal(got["random_states"]["per_process"][index]["torch"], state["torch"])


def test_a_checkpoint_without_generator_states_reseeds_from_the_iteration(tmp_path):
    """Checkpoints written before the states were recorded: the generators are seeded from
    (train.seed + rank, iteration), with a warning, rather than replaying iteration 0."""
    config = tmp_path / "tiny_random.py"
    config.write_text(RANDOM_CONFIG)
    resumed = tmp_path / "resumed"
    run_train_net(config, f"train.output_dir={resumed}", "train.max_iter=2")
    checkpoint = load(resumed / "model_final.pth")
    del checkpoint["random_states"]
    torch.save(checkpoint, resumed / "model_final.pth")
    result = run_train_net(config, "--resume", f"train.output_dir={resumed}", "train.max_iter=3")
    assert "holds no random-generator states for process 0" in result.stdout + result.stderr


def test_more_processes_than_the_checkpoint_has_states_for_is_said_by_the_main_one(tmp_path):
    """The warning of a process without saved states reached only its log.txt.rank1."""
    config = tmp_path / "tiny_random.py"
    config.write_text(RANDOM_CONFIG)
    resumed = tmp_path / "resumed"
    run_train_net(config, f"train.output_dir={resumed}", "train.max_iter=2")
    run_train_net(
        config, "--num-gpus", "2", "--resume", f"train.output_dir={resumed}", "train.max_iter=3"
    )
    log = (resumed / "log.txt").read_text()
    assert "states for 1 process(es), this run has 2: process(es) 1 are seeded afresh" in log
