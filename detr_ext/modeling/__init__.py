"""Detector parts shared by the DETR-family projects: matchers, criteria, losses and
the meta-architecture base class."""

from .criterions import SetCriterion
from .losses import ia_bce_loss, sigmoid_focal_loss
from .matchers import HungarianMatcher, ManyToOneMatcher
from .meta_arch import DetectorBase

__all__ = [
    "DetectorBase",
    "HungarianMatcher",
    "ManyToOneMatcher",
    "SetCriterion",
    "ia_bce_loss",
    "sigmoid_focal_loss",
]
