"""A mapper reading images in another channel order than the model normalizes for is refused
(changing dataloader.train.mapper.img_format alone used to train on swapped channels)."""

from __future__ import annotations

import pytest
import torch
from detectron2.config import LazyConfig, instantiate

from detr_ext.engine import setup
from detr_ext.engine.input_format import InputFormatError, check_input_format, config_node
from detr_ext.engine.predictor import Predictor
from tests.tool_runs import SHAPES_CONFIGS, load_script

CONFIG = SHAPES_CONFIGS["dino"]


def test_shipped_configs_agree():
    for path in SHAPES_CONFIGS.values():
        check_input_format(LazyConfig.load(str(path)))


@pytest.mark.parametrize("split", ["train", "test"])
def test_a_mapper_in_another_order_is_refused(split):
    cfg = LazyConfig.load(str(CONFIG))
    cfg.dataloader[split].mapper.img_format = "BGR"
    with pytest.raises(InputFormatError, match=rf"dataloader.{split}.mapper.img_format='BGR'"):
        check_input_format(cfg)
    # Changed together: fine.
    cfg.model.input_format = "BGR"
    other = "test" if split == "train" else "train"
    cfg.dataloader[other].mapper.img_format = "BGR"
    check_input_format(cfg)


def test_defaults_are_compared_as_the_objects_get_them():
    """The mapper's default img_format (RGB) against a model set to BGR."""
    cfg = LazyConfig.load(str(CONFIG))
    for split in ("test", "train"):  # the test mapper's may interpolate the train one's
        cfg.dataloader[split].mapper.pop("img_format", None)
    check_input_format(cfg)
    cfg.model.input_format = "BGR"
    with pytest.raises(InputFormatError, match="img_format='RGB' but model.input_format='BGR'"):
        check_input_format(cfg)


def test_setup_and_predictor_refuse_it(tmp_path):
    parser = load_script("tools/train_net.py").build_parser()
    args = parser.parse_args(
        ["--config-file", str(CONFIG), f"train.output_dir={tmp_path}"]
        + ["dataloader.train.mapper.img_format=BGR"]
    )
    with pytest.raises(InputFormatError):
        setup(args)
    cfg = LazyConfig.load(str(CONFIG))
    path = tmp_path / "weights.pth"
    torch.save({"model": instantiate(cfg.model).state_dict()}, path)
    cfg.dataloader.test.mapper.img_format = "BGR"
    with pytest.raises(ValueError, match="Predictor: dataloader.test.mapper.img_format='BGR'"):
        Predictor(cfg, path, device="cpu")


def test_a_missing_config_node_is_named():
    cfg = LazyConfig.load(str(CONFIG))
    assert config_node(cfg, "dataloader.test.mapper") is cfg.dataloader.test.mapper
    del cfg.dataloader.test.mapper
    with pytest.raises(
        KeyError, match=r"^'expected the config to define cfg.dataloader.test.mapper,"
    ):
        config_node(cfg, "dataloader.test.mapper.augmentation")
