"""DINO's criterion now lives in :mod:`detr_ext.modeling.criterions.dn_criterion` (Align-DETR
uses it too, and a project never imports another). This module keeps the old import path
working for configs saved before the move (``config.yaml`` names
``projects.dino.modeling.dn_criterion.DINOCriterion``)."""

from detr_ext.modeling.criterions.dn_criterion import DINOCriterion

__all__ = ["DINOCriterion"]
