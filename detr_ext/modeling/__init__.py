"""Detector parts shared by the DETR-family projects: matchers, criteria, losses and
the meta-architecture base class."""

from .criterions import SetCriterion
from .losses import sigmoid_focal_loss
from .matchers import HungarianMatcher
from .meta_arch import DetectorBase

__all__ = ["DetectorBase", "HungarianMatcher", "SetCriterion", "sigmoid_focal_loss"]
