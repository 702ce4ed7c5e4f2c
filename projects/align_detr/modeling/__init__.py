"""Align-DETR modeling: the meta-architecture (DINO's network, from ``detr_ext``) and its
criterion."""

from .align_criterion import AlignDETRCriterion
from .align_detr import AlignDETR

__all__ = ["AlignDETR", "AlignDETRCriterion"]
