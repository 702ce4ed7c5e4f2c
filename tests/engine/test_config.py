"""get_config and the shared configs under configs/common."""

from pathlib import Path

import pytest
import torch
from detectron2.config import instantiate
from torch import nn

from detr_ext.config import (
    ConfigUsageError,
    check_overrides,
    configs_dir,
    default_X_scheduler,
    get_config,
)
from tests.tool_runs import SHAPES_CONFIGS, run_tool


def test_train_config_loads_with_defaults():
    train = get_config("common/train.py").train
    assert train.max_iter == 90000 and train.device == "cuda"
    assert train.amp.enabled is False and train.bf16 is False
    assert train.clip_grad.params.max_norm == 0.1
    assert train.ema.enabled is False and train.ema.decay == 0.9998
    assert train.checkpointer.period == 5000


class WithBackbone(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Linear(2, 2)
        self.head = nn.Linear(2, 1)
        self.norm = nn.LayerNorm(2)


def _lr_and_decay_by_param(optimizer: torch.optim.Optimizer) -> dict[int, tuple[float, float]]:
    return {
        id(param): (group["lr"], group["weight_decay"])
        for group in optimizer.param_groups
        for param in group["params"]
    }


def test_adamw_config_instantiates_with_backbone_lr_factor():
    optim_cfg = get_config("common/optim.py").AdamW
    model = WithBackbone()
    optim_cfg.params.model = model
    optim_cfg.params.lr_factor_func = lambda module_name: 0.1 if "backbone" in module_name else 1
    optimizer = instantiate(optim_cfg)
    assert isinstance(optimizer, torch.optim.AdamW)
    settings = _lr_and_decay_by_param(optimizer)
    assert settings[id(model.backbone.weight)][0] == pytest.approx(1e-5)
    assert settings[id(model.head.weight)] == (pytest.approx(1e-4), pytest.approx(1e-4))
    assert settings[id(model.norm.weight)][1] == 0.0  # no weight decay on norm layers


def test_sgd_config_instantiates():
    optim_cfg = get_config("common/optim.py").SGD
    optim_cfg.params.model = nn.Linear(2, 1)
    optimizer = instantiate(optim_cfg)
    assert isinstance(optimizer, torch.optim.SGD)
    assert optimizer.param_groups[0]["lr"] == 0.02


def test_12ep_schedule_decays_at_epoch_11():
    schedule_cfg = get_config("common/coco_schedule.py")
    multiplier_cfg = schedule_cfg.lr_multiplier_12ep
    assert list(multiplier_cfg.scheduler.milestones) == [11 * 7500, 12 * 7500]
    multiplier = instantiate(multiplier_cfg)
    total = 12 * 7500
    for iteration in (0, 1000, 11 * 7500 - 10):
        assert multiplier(iteration / total) == pytest.approx(1.0)
    for iteration in (11 * 7500 + 10, total - 1):
        assert multiplier(iteration / total) == pytest.approx(0.1)


def test_schedule_warmup_and_validation():
    multiplier = instantiate(default_X_scheduler(12, 11, warmup_epochs=1))
    assert multiplier(0.0) == pytest.approx(0.001)
    assert multiplier(0.5 / 12) == pytest.approx(0.001 + 0.999 * 0.5)
    assert multiplier(2 / 12) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="decay_epochs"):
        default_X_scheduler(12, 12)


def test_missing_config_names_the_searched_path():
    with pytest.raises(FileNotFoundError) as excinfo:
        get_config("common/no_such_config.py")
    assert str(configs_dir() / "common" / "no_such_config.py") in str(excinfo.value)


def test_env_var_overrides_configs_dir(tmp_path, monkeypatch):
    (tmp_path / "mine.py").write_text("section = dict(value=3)\n")
    monkeypatch.setenv("DETR_EXT_CONFIGS", str(tmp_path))
    assert configs_dir() == tmp_path
    assert get_config("mine.py").section.value == 3


def test_checkout_reads_the_repository_configs(monkeypatch):
    """In a source checkout the repository's configs/ is the one copy (setup.py copies it into
    built packages only; tests/test_packaging.py checks an installed package)."""
    monkeypatch.delenv("DETR_EXT_CONFIGS", raising=False)
    repo_root = Path(__file__).resolve().parents[2]
    assert configs_dir() == repo_root / "configs"
    assert not (repo_root / "detr_ext" / "config" / "configs").exists()


def test_load_config_applies_overrides_and_names_bad_input(tmp_path):
    from detr_ext.config import ConfigUsageError, load_config

    config = tmp_path / "cfg.py"
    config.write_text("train = dict(max_iter=10, output_dir='a')\n")
    cfg = load_config(config, ["train.max_iter=3"])
    assert cfg.train.max_iter == 3 and cfg.train.output_dir == "a"
    with pytest.raises(ConfigUsageError, match=r"LazyConfig \.py file, got .*missing\.py"):
        load_config(tmp_path / "missing.py")
    with pytest.raises(ConfigUsageError, match=r"key=value, got \['max_iter'\]"):
        load_config(config, ["train.max_iter=3", "max_iter"])


def test_an_option_among_the_overrides_is_named(tmp_path):
    """detectron2's parser takes everything after the first key=value as overrides:
    ``train.max_iter=10 --resume`` ended in hydra's "LexerNoViableAltException: --resume"
    traceback from every process."""
    with pytest.raises(ConfigUsageError, match=r"option\(s\) \['--resume'\].*options go before"):
        check_overrides(["train.max_iter=10", "--resume"])
    assert check_overrides(["train.seed=-1", "model.pixel_mean=[-1,0,1]"])  # values may be < 0
    result = run_tool(
        "train_net.py",
        ["--config-file", str(SHAPES_CONFIGS["dino"]), "train.max_iter=1", "--resume"],
        cwd=tmp_path,
        datasets=tmp_path,
    )
    assert result.returncode == 2
    assert "train_net.py: error: expected config overrides as key=value" in result.stderr
    assert "Traceback" not in result.stderr
