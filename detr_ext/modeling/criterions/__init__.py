"""Criteria: the training losses of DETR-family detectors."""

from .base_criterion import Indices, SetCriterion
from .deformable_criterion import DeformableCriterion
from .dn_criterion import DINOCriterion
from .grounding_criterion import GroundingCriterion
from .segm_criterion import SegmCriterion

__all__ = [
    "DINOCriterion",
    "DeformableCriterion",
    "GroundingCriterion",
    "Indices",
    "SegmCriterion",
    "SetCriterion",
]
