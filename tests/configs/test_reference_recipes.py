"""The COCO configs set what the recipes they reproduce set, each value with its source.

A config audit found the 24-epoch DINO configs inheriting the 12-epoch position embedding
(detrex's and the DINO authors' 24-epoch runs use DAB-DETR's: temperature 20, no offset, so a
detrex checkpoint of that model gave other outputs here) and the DETR configs dropping the
images without objects that facebookresearch/detr trains on. Values are read from the loaded
config, as train_net gets them.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from detectron2.config import LazyConfig
from omegaconf import OmegaConf

REPO_ROOT = Path(__file__).resolve().parents[2]
DINO = "projects/dino/configs"
DETR = "projects/detr/configs"
DETREX_DINO = "IDEA-Research/detrex projects/dino/configs/dino-resnet"

# (config, dotted key, expected value, source)
RECIPES = [
    (f"{DINO}/dino_r50_4scale_12ep.py", "model.position_embedding.temperature", 10000, DETREX_DINO),
    (f"{DINO}/dino_r50_4scale_12ep.py", "model.position_embedding.offset", -0.5, DETREX_DINO),
    (f"{DINO}/dino_r50_4scale_24ep.py", "model.position_embedding.temperature", 20, DETREX_DINO),
    (f"{DINO}/dino_r50_4scale_24ep.py", "model.position_embedding.offset", 0.0, DETREX_DINO),
    (
        f"{DINO}/dino_r50_4scale_24ep.py",
        "dataloader.train.dataset.filter_empty",
        False,
        DETREX_DINO,
    ),
    (f"{DINO}/dino_r50_4scale_24ep.py", "train.max_iter", 180000, DETREX_DINO),
    (f"{DINO}/dino_r50_5scale_24ep.py", "model.position_embedding.temperature", 20, "DINO_5scale"),
    (f"{DINO}/dino_r50_5scale_24ep.py", "model.position_embedding.offset", 0.0, "DINO_5scale"),
    (f"{DINO}/dino_r50_4scale_12ep.py", "model.dn_number", 100, "DINO scripts"),
    (f"{DINO}/dino_r50_4scale_12ep.py", "model.label_noise_ratio", 0.5, "DINO scripts"),
    (f"{DINO}/dino_r50_4scale_12ep.py", "model.num_queries", 900, DETREX_DINO),
    (f"{DINO}/dino_r50_4scale_12ep.py", "model.backbone.freeze_at", 1, DETREX_DINO),
    (f"{DETR}/detr_r50_300ep.py", "dataloader.train.dataset.filter_empty", False, "detr d2"),
    (f"{DETR}/detr_r50_500ep.py", "dataloader.train.dataset.filter_empty", False, "detr d2"),
    (f"{DETR}/detr_r50_300ep.py", "dataloader.train.total_batch_size", 64, "detr d2"),
    (f"{DETR}/detr_r50_300ep.py", "train.clip_grad.params.max_norm", 0.1, "detr main.py"),
]


def _value(cfg, dotted_key: str):
    value = OmegaConf.select(cfg, dotted_key, throw_on_missing=True)
    assert value is not None, f"{dotted_key} is not set"
    return value


@pytest.mark.parametrize(
    ("config", "key", "expected", "source"),
    RECIPES,
    ids=[f"{Path(config).stem}:{key}" for config, key, _, _ in RECIPES],
)
def test_config_sets_the_reference_value(config, key, expected, source):
    cfg = LazyConfig.load(str(REPO_ROOT / config))
    assert _value(cfg, key) == expected, f"{config}: {key} differs from {source}"


def test_the_24_epoch_dino_models_differ_from_the_12_epoch_ones_only_in_the_embedding():
    for scales in ("4scale", "5scale"):
        short = LazyConfig.load(str(REPO_ROOT / DINO / f"dino_r50_{scales}_12ep.py"))
        long = LazyConfig.load(str(REPO_ROOT / DINO / f"dino_r50_{scales}_24ep.py"))
        for cfg in (short, long):
            cfg.model.position_embedding.temperature = 0
            cfg.model.position_embedding.offset = 0
        assert OmegaConf.to_yaml(short.model) == OmegaConf.to_yaml(long.model)
