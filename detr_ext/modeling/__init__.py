"""Detector parts shared by the DETR-family projects: matchers, criteria, losses and
the meta-architecture base classes."""

from .criterions import (
    DeformableCriterion,
    DINOCriterion,
    GroundingCriterion,
    SegmCriterion,
    SetCriterion,
)
from .losses import ia_bce_loss, sigmoid_focal_loss
from .matchers import GroundingHungarianMatcher, HungarianMatcher, ManyToOneMatcher
from .meta_arch import (
    DeformableDetectorBase,
    DeformableDETRDetectorBase,
    DetectorBase,
    DETRDetectorBase,
    DETRSegmDetectorBase,
    DINODetectorBase,
    combine_panoptic,
)

__all__ = [
    "DETRDetectorBase",
    "DETRSegmDetectorBase",
    "DINOCriterion",
    "DINODetectorBase",
    "DeformableCriterion",
    "DeformableDETRDetectorBase",
    "DeformableDetectorBase",
    "DetectorBase",
    "GroundingCriterion",
    "GroundingHungarianMatcher",
    "HungarianMatcher",
    "ManyToOneMatcher",
    "SegmCriterion",
    "SetCriterion",
    "combine_panoptic",
    "ia_bce_loss",
    "sigmoid_focal_loss",
]
