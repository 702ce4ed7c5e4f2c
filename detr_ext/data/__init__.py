"""Data loading for DETR-family detectors: the dataset mappers (instances, panoptic), image
reading and bundled datasets."""

from .aug_input import ClampedAugInput, clamp_resize_transforms
from .dataset_mapper import DetrDatasetMapper
from .datasets import (
    generate_shapes_dataset,
    generate_shapes_panoptic,
    register_coco_format_dataset,
    register_shapes,
    register_shapes_grounding,
    register_shapes_panoptic,
)
from .image_io import HighBitDepthError, ImageReadError, read_image_file
from .panoptic_mapper import DetrPanopticDatasetMapper

__all__ = [
    "ClampedAugInput",
    "DetrDatasetMapper",
    "DetrPanopticDatasetMapper",
    "HighBitDepthError",
    "ImageReadError",
    "generate_shapes_dataset",
    "generate_shapes_panoptic",
    "read_image_file",
    "register_coco_format_dataset",
    "register_shapes",
    "register_shapes_grounding",
    "clamp_resize_transforms",
    "register_shapes_panoptic",
]
