"""Data loading for DETR-family detectors: the dataset mapper, image reading and bundled
datasets."""

from .dataset_mapper import DetrDatasetMapper
from .datasets import (
    generate_shapes_dataset,
    register_coco_format_dataset,
    register_shapes,
    register_shapes_grounding,
)
from .image_io import ImageReadError, read_image_file

__all__ = [
    "DetrDatasetMapper",
    "ImageReadError",
    "generate_shapes_dataset",
    "read_image_file",
    "register_coco_format_dataset",
    "register_shapes",
    "register_shapes_grounding",
]
