"""Meta-architecture bases: detectron2's model I/O contract for DETR-family detectors, and the
shared network of the deformable ones."""

from .base import DetectorBase
from .deformable_base import DeformableDetectorBase

__all__ = ["DeformableDetectorBase", "DetectorBase"]
