"""Bundled datasets and helpers to register COCO-format ones with detectron2."""

from .coco_format import register_coco_format_dataset
from .shapes import (
    SHAPES_CATEGORIES,
    SHAPES_COLORS,
    SHAPES_DATASET_NAMES,
    default_shapes_root,
    generate_shapes_dataset,
    register_shapes,
)
from .shapes_grounding import (
    CATEGORY_RECORD_ID_OFFSET,
    SHAPES_GROUNDING_DATASET_NAMES,
    register_shapes_grounding,
)

__all__ = [
    "CATEGORY_RECORD_ID_OFFSET",
    "SHAPES_CATEGORIES",
    "SHAPES_COLORS",
    "SHAPES_DATASET_NAMES",
    "SHAPES_GROUNDING_DATASET_NAMES",
    "default_shapes_root",
    "generate_shapes_dataset",
    "register_coco_format_dataset",
    "register_shapes",
    "register_shapes_grounding",
]
