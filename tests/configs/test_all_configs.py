"""Every LazyConfig file under configs/ and projects/*/configs/ loads, and its model builds."""

from pathlib import Path

import pytest
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


@pytest.mark.parametrize("config_file", CONFIG_FILES, ids=_config_id)
def test_config_loads_and_model_instantiates(config_file):
    cfg = LazyConfig.load(str(config_file))
    assert len(cfg) > 0, f"{_config_id(config_file)} defines no config"
    if "model" not in cfg:
        return
    model = instantiate(cfg.model)
    assert isinstance(model, nn.Module)
    assert sum(parameter.numel() for parameter in model.parameters()) > 0
    if "train" in cfg and "dataloader" in cfg:
        # A full training config: the pieces train_net needs are all there, and no train
        # option that train_net would ignore.
        assert {"optimizer", "lr_multiplier"} <= set(cfg)
        assert cfg.train.max_iter > 0
        check_train_options(cfg.train)
