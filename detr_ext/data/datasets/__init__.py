"""Bundled datasets (shapes: instances, grounding, panoptic) and helpers to register
COCO-format ones with detectron2."""

from .coco_format import (
    image_files_not_required,
    register_coco_format_dataset,
    registration_warnings,
)
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
from .shapes_panoptic import (
    SHAPES_PANOPTIC_CATEGORIES,
    SHAPES_PANOPTIC_DATASET_NAMES,
    generate_shapes_panoptic,
    register_shapes_panoptic,
)

__all__ = [
    "CATEGORY_RECORD_ID_OFFSET",
    "SHAPES_CATEGORIES",
    "SHAPES_COLORS",
    "SHAPES_DATASET_NAMES",
    "SHAPES_GROUNDING_DATASET_NAMES",
    "SHAPES_PANOPTIC_CATEGORIES",
    "SHAPES_PANOPTIC_DATASET_NAMES",
    "default_shapes_root",
    "generate_shapes_dataset",
    "generate_shapes_panoptic",
    "image_files_not_required",
    "register_coco_format_dataset",
    "registration_warnings",
    "register_shapes",
    "register_shapes_grounding",
    "register_shapes_panoptic",
]
