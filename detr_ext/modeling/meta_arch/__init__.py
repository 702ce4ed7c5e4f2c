"""Meta-architecture base: detectron2's model I/O contract for DETR-family detectors."""

from .base import DetectorBase

__all__ = ["DetectorBase"]
