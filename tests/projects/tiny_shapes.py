"""Every project's shapes config with its model shrunk for fast tests, and synthetic batches.

The models are the real ones the configs build (backbone, neck, transformer, criterion),
only narrower and shallower: width 32, 1 encoder and 2 decoder layers, 10 queries, 6
denoising queries. Batches are detectron2 ``batched_inputs`` dicts made here, so no dataset
files are needed.
"""

from __future__ import annotations

from pathlib import Path

import torch
from detectron2.config import LazyConfig
from detectron2.structures import BitMasks, Boxes, Instances
from omegaconf import DictConfig

REPO_ROOT = Path(__file__).resolve().parents[2]

SHAPES_CONFIGS = {
    "detr": REPO_ROOT / "projects/detr/configs/detr_shapes.py",
    "deformable_detr": REPO_ROOT / "projects/deformable_detr/configs/deformable_detr_shapes.py",
    "dino": REPO_ROOT / "projects/dino/configs/dino_shapes.py",
    "align_detr": REPO_ROOT / "projects/align_detr/configs/align_detr_shapes.py",
    "detr_segm": REPO_ROOT / "projects/detr/configs/detr_segm_shapes.py",
    "grounding_dino": REPO_ROOT / "projects/grounding_dino/configs/grounding_dino_shapes.py",
}
"""Project (or model) name -> its shapes config (3 classes). ``detr_segm`` is DETR with its
segmentation head (masks from :func:`synthetic_batch`'s ``gt_masks``); ``grounding_dino``
reads each image's category prompt (the default one) with a tiny random text encoder."""

DEFORMABLE_PROJECTS = ("deformable_detr", "dino", "align_detr", "grounding_dino")

# A 1-layer, 32-wide BERT in place of the config's all-MiniLM-L6-v2 (same packaged tokenizer,
# random weights, nothing downloaded).
TINY_TEXT_ENCODER = {
    "num_hidden_layers": 1,
    "hidden_size": 32,
    "num_attention_heads": 2,
    "intermediate_size": 64,
}

EMBED_DIM = 32
NUM_QUERIES = 10
NUM_DECODER_LAYERS = 2


def tiny_shapes_config(project: str) -> DictConfig:
    """``SHAPES_CONFIGS[project]`` loaded, with ``model`` shrunk (see the module docstring);
    every other section (``train``, ``optimizer``, ...) is the config's own."""
    cfg = LazyConfig.load(str(SHAPES_CONFIGS[project]))
    model = cfg.model
    model.embed_dim = EMBED_DIM
    model.num_queries = NUM_QUERIES
    model.select_box_nums_for_evaluation = NUM_QUERIES
    model.position_embedding.num_pos_feats = EMBED_DIM // 2
    for part, num_layers in (
        (model.transformer.encoder, 1),
        (model.transformer.decoder, NUM_DECODER_LAYERS),
    ):
        part.update(embed_dim=EMBED_DIM, num_heads=4, feedforward_dim=64, num_layers=num_layers)
    if project == "deformable_detr":
        # ResNet-18 at half width (res3/res4/res5: 64/128/256 channels), as dino_shapes
        # narrows its own (GroupNorm's 32 groups need the stem's 32 channels).
        model.backbone.base_channels = 32
        for name, channels in (("res3", 64), ("res4", 128), ("res5", 256)):
            model.neck.input_shapes[name].channels = channels
    if project in DEFORMABLE_PROJECTS:
        model.neck.out_channels = EMBED_DIM
        model.neck.norm_layer.num_groups = 8
        model.neck.norm_layer.num_channels = EMBED_DIM
    if project in ("dino", "align_detr", "grounding_dino"):
        model.dn_number = 6
    if project == "detr_segm":
        model.mask_head.dim = EMBED_DIM + model.bbox_attention.num_heads
        model.criterion.num_points = 256
    if project == "grounding_dino":
        model.text_encoder.config_overrides = TINY_TEXT_ENCODER
        model.category_names = ["circle", "square", "triangle"]
        model.transformer.encoder.update(text_feedforward_dim=64, fusion_embed_dim=64)
    if project == "align_detr":
        model.criterion.match_num = [2] * NUM_DECODER_LAYERS + [1]
    return cfg


def synthetic_batch(
    object_counts: list[int], seed: int, sizes: tuple[tuple[int, int], ...] = ((64, 80), (80, 64))
) -> list[dict]:
    """Training inputs: image ``i`` is ``sizes[i % len(sizes)]`` (so a batch is padded) with
    ``object_counts[i]`` random boxes of classes 0-2 (absolute ``xyxy``; 0 gives an image
    without objects, as the dataset mapper leaves an image whose objects were all cropped
    away or crowd) and, for mask models, ``gt_masks``: each box's rectangle (``BitMasks``;
    models without a mask head ignore them)."""
    generator = torch.Generator().manual_seed(seed)
    batch = []
    for index, count in enumerate(object_counts):
        height, width = sizes[index % len(sizes)]
        top_left = torch.rand(count, 2, generator=generator) * 32
        size = 8 + torch.rand(count, 2, generator=generator) * 24
        instances = Instances((height, width))
        instances.gt_boxes = Boxes(torch.cat([top_left, top_left + size], 1))
        instances.gt_classes = torch.randint(0, 3, (count,), generator=generator)
        instances.gt_masks = _box_masks(instances.gt_boxes.tensor, height, width)
        image = torch.randint(0, 256, (3, height, width), generator=generator, dtype=torch.uint8)
        batch.append({"image": image, "instances": instances, "height": height, "width": width})
    return batch


def _box_masks(boxes: torch.Tensor, height: int, width: int) -> BitMasks:
    """``BitMasks`` ``[N, height, width]``: the pixels inside each absolute ``xyxy`` box."""
    masks = torch.zeros((len(boxes), height, width), dtype=torch.bool)
    for index, (x0, y0, x1, y1) in enumerate(boxes.round().int().tolist()):
        masks[index, max(y0, 0) : y1, max(x0, 0) : x1] = True
    return BitMasks(masks)
