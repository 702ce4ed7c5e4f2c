"""Data loading for DETR-family detectors: the dataset mapper and bundled datasets."""

from .dataset_mapper import DetrDatasetMapper
from .datasets import (
    generate_shapes_dataset,
    register_coco_format_dataset,
    register_shapes,
)

__all__ = [
    "DetrDatasetMapper",
    "generate_shapes_dataset",
    "register_coco_format_dataset",
    "register_shapes",
]
