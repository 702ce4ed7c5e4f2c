"""Detector parts shared by the DETR-family projects: matchers, criteria, losses and
the meta-architecture base classes."""

from .criterions import DINOCriterion, SetCriterion
from .losses import ia_bce_loss, sigmoid_focal_loss
from .matchers import HungarianMatcher, ManyToOneMatcher
from .meta_arch import DeformableDetectorBase, DetectorBase, DINODetectorBase

__all__ = [
    "DINOCriterion",
    "DINODetectorBase",
    "DeformableDetectorBase",
    "DetectorBase",
    "HungarianMatcher",
    "ManyToOneMatcher",
    "SetCriterion",
    "ia_bce_loss",
    "sigmoid_focal_loss",
]
