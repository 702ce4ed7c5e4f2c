"""Detector parts shared by the DETR-family projects: matchers, criteria and losses."""

from .criterions import SetCriterion
from .losses import sigmoid_focal_loss
from .matchers import HungarianMatcher

__all__ = ["HungarianMatcher", "SetCriterion", "sigmoid_focal_loss"]
