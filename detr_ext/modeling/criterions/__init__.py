"""Criteria: the training losses of DETR-family detectors."""

from .base_criterion import SetCriterion

__all__ = ["SetCriterion"]
