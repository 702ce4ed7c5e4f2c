"""Tiny Deformable DETR models and batches shared by the Deformable DETR tests: the shapes
config shrunk further, in its three variants (plain, box refinement, two-stage)."""

from __future__ import annotations

from pathlib import Path

import torch
from detectron2.config import LazyConfig, instantiate
from detectron2.structures import Boxes, Instances

from projects.deformable_detr.modeling import DeformableDETR

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = REPO_ROOT / "projects" / "deformable_detr" / "configs"

# config file -> (with_box_refine, as_two_stage, detrex key list)
R50_CONFIGS = {
    "deformable_detr_r50_50ep.py": (False, False, "detrex_deformable_detr_r50.txt"),
    "deformable_detr_r50_with_box_refinement_50ep.py": (
        True,
        False,
        "detrex_deformable_detr_r50_box_refine.txt",
    ),
    "deformable_detr_r50_two_stage_50ep.py": (
        True,
        True,
        "detrex_deformable_detr_r50_two_stage.txt",
    ),
}
VARIANTS = {"plain": (False, False), "box_refine": (True, False), "two_stage": (True, True)}


def load_config(name: str):
    return LazyConfig.load(str(CONFIG_DIR / name))


def tiny_model_config(with_box_refine: bool, as_two_stage: bool, dropout: float = 0.0):
    """The shapes config shrunk further: width 32, 1 + 2 layers, 6 queries."""
    cfg = load_config("deformable_detr_shapes.py")
    model = cfg.model
    model.neck.out_channels = 32
    model.neck.norm_layer.num_groups = 8
    model.neck.norm_layer.num_channels = 32
    model.position_embedding.num_pos_feats = 16
    for part, num_layers in ((model.transformer.encoder, 1), (model.transformer.decoder, 2)):
        part.embed_dim = 32
        part.num_heads = 4
        part.feedforward_dim = 64
        part.num_layers = num_layers
        part.attn_dropout = dropout
        part.ffn_dropout = dropout
    model.embed_dim = 32
    model.num_queries = 6
    model.select_box_nums_for_evaluation = 5
    model.with_box_refine = with_box_refine
    model.as_two_stage = as_two_stage
    return model


def tiny_model(variant: str) -> DeformableDETR:
    return instantiate(tiny_model_config(*VARIANTS[variant]))


def tiny_batch(with_instances: bool = True) -> list[dict]:
    """Two images of different sizes (so the batch is padded), with 2 and 1 objects."""
    generator = torch.Generator().manual_seed(0)
    inputs = []
    for (height, width), boxes, classes in (
        ((64, 48), [[4.0, 6.0, 30.0, 40.0], [20.0, 30.0, 46.0, 60.0]], [0, 2]),
        ((48, 64), [[10.0, 8.0, 50.0, 40.0]], [1]),
    ):
        image = torch.randint(0, 256, (3, height, width), generator=generator).float()
        item = {"image": image, "height": 2 * height, "width": 2 * width}
        if with_instances:
            instances = Instances((height, width))
            instances.gt_boxes = Boxes(torch.tensor(boxes))
            instances.gt_classes = torch.tensor(classes)
            item["instances"] = instances
        inputs.append(item)
    return inputs
