"""Bundled datasets and helpers to register COCO-format ones with detectron2."""

from .coco_format import register_coco_format_dataset
from .shapes import (
    SHAPES_CATEGORIES,
    SHAPES_DATASET_NAMES,
    default_shapes_root,
    generate_shapes_dataset,
    register_shapes,
)

__all__ = [
    "SHAPES_CATEGORIES",
    "SHAPES_DATASET_NAMES",
    "default_shapes_root",
    "generate_shapes_dataset",
    "register_coco_format_dataset",
    "register_shapes",
]
