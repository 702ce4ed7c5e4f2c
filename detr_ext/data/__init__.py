"""Data loading for DETR-family detectors: the dataset mappers (instances, panoptic), image
reading and bundled datasets."""

from .dataset_mapper import DetrDatasetMapper
from .datasets import (
    generate_shapes_dataset,
    generate_shapes_panoptic,
    register_coco_format_dataset,
    register_shapes,
    register_shapes_grounding,
    register_shapes_panoptic,
)
from .image_io import ImageReadError, read_image_file
from .panoptic_mapper import DetrPanopticDatasetMapper

__all__ = [
    "DetrDatasetMapper",
    "DetrPanopticDatasetMapper",
    "ImageReadError",
    "generate_shapes_dataset",
    "generate_shapes_panoptic",
    "read_image_file",
    "register_coco_format_dataset",
    "register_shapes",
    "register_shapes_grounding",
    "register_shapes_panoptic",
]
