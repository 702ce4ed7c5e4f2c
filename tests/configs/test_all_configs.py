"""Every LazyConfig file under configs/ and projects/*/configs/ loads, and its model builds."""

from pathlib import Path

import pytest
import torch
from detectron2.config import LazyConfig, instantiate
from torch import nn

from detr_ext.engine.train_options import check_train_options

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIG_FILES = sorted(
    [
        *(REPO_ROOT / "configs").rglob("*.py"),
        *(REPO_ROOT / "projects").glob("*/configs/**/*.py"),
    ]
)


def _config_id(path: Path) -> str:
    return str(path.relative_to(REPO_ROOT))


def test_configs_are_found():
    names = {_config_id(path) for path in CONFIG_FILES}
    assert "projects/detr/configs/detr_r50_300ep.py" in names
    assert "configs/common/train.py" in names


def _has_model(path: Path) -> bool:
    return "model" in LazyConfig.load(str(path))


MODEL_CONFIGS = [path for path in CONFIG_FILES if _has_model(path)]
# Shared pieces without a model: data, optimizers, schedules, train options, backbone parts.
PIECES = [path for path in CONFIG_FILES if path not in MODEL_CONFIGS]


@pytest.mark.parametrize("config_file", MODEL_CONFIGS, ids=_config_id)
def test_config_loads_and_model_instantiates(config_file):
    cfg = LazyConfig.load(str(config_file))
    model = instantiate(cfg.model)
    assert isinstance(model, nn.Module)
    assert sum(parameter.numel() for parameter in model.parameters()) > 0
    if "train" in cfg and "dataloader" in cfg:
        # A full training config: the pieces train_net needs are all there, and no train
        # option that train_net would ignore.
        assert {"optimizer", "lr_multiplier"} <= set(cfg)
        assert cfg.train.max_iter > 0
        check_train_options(cfg.train)


@pytest.mark.parametrize("config_file", PIECES, ids=_config_id)
def test_shared_piece_builds(config_file):
    """Each piece's parts build as a config using it would build them: mappers, optimizers
    (over a small model), learning-rate schedules, backbone parts; train options pass the
    check train_net makes."""
    cfg = LazyConfig.load(str(config_file))
    built = 0
    for split in ("train", "test"):
        if "dataloader" in cfg and split in cfg.dataloader:
            mapper = instantiate(cfg.dataloader[split].mapper)
            assert callable(mapper)
            built += 1
    model = nn.Linear(4, 2)
    for name in ("optimizer", "AdamW", "SGD"):
        if name in cfg:
            cfg[name].params.model = model
            optimizer = instantiate(cfg[name])
            assert isinstance(optimizer, torch.optim.Optimizer)
            assert sum(len(group["params"]) for group in optimizer.param_groups) == 2
            built += 1
    for name in [key for key in cfg if key.startswith("lr_multiplier")]:
        schedule = instantiate(cfg[name])
        assert schedule(0.0) > 0 and schedule(0.999) > 0
        built += 1
    if "train" in cfg:
        check_train_options(cfg.train)
        built += 1
    for name in ("backbone", "neck", "position_embedding"):
        if name in cfg:
            assert isinstance(instantiate(cfg[name]), nn.Module)
            built += 1
    assert built > 0, f"{_config_id(config_file)}: nothing in it was built"
