"""Detector parts shared by the DETR-family projects: matchers, criteria, losses and
the meta-architecture base classes."""

from .criterions import DeformableCriterion, DINOCriterion, GroundingCriterion, SetCriterion
from .losses import ia_bce_loss, sigmoid_focal_loss
from .matchers import GroundingHungarianMatcher, HungarianMatcher, ManyToOneMatcher
from .meta_arch import (
    DeformableDetectorBase,
    DeformableDETRDetectorBase,
    DetectorBase,
    DETRDetectorBase,
    DINODetectorBase,
)

__all__ = [
    "DETRDetectorBase",
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
    "SetCriterion",
    "ia_bce_loss",
    "sigmoid_focal_loss",
]
