"""COCO evaluation: detectron2's ``COCOEvaluator`` with a hotcoco or pycocotools backend and
an optional error analysis (TIDE errors, confusion matrix); panoptic quality with hotcoco
(``COCOPanopticEvaluator``); phrase-grounding recall (``GroundingEvaluator``)."""

from .analysis import draw_error_analysis, error_analysis, write_error_analysis
from .coco_backend import (
    BACKENDS,
    evaluate_on_coco,
    hotcoco_available,
    load_coco_gt,
    resolve_backend,
    summary_stats,
)
from .coco_evaluator import COCOEvaluator
from .grounding import GroundingEvaluator
from .panoptic import COCOPanopticEvaluator, id2rgb

__all__ = [
    "BACKENDS",
    "COCOEvaluator",
    "COCOPanopticEvaluator",
    "GroundingEvaluator",
    "draw_error_analysis",
    "error_analysis",
    "evaluate_on_coco",
    "hotcoco_available",
    "id2rgb",
    "load_coco_gt",
    "resolve_backend",
    "summary_stats",
    "write_error_analysis",
]
