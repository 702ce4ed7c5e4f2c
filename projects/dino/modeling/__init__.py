"""DINO modeling: the registered ``DINO`` meta-architecture.

DINO's network lives in ``detr_ext`` (Align-DETR shares it, and a project never imports
another): the transformer in :mod:`detr_ext.layers` (``DINOTransformer``,
``DINOTransformerEncoder``, ``DINOTransformerDecoder``), the meta-architecture body in
:class:`detr_ext.modeling.DINODetectorBase` and the criterion in :mod:`detr_ext.modeling`
(``DINOCriterion``). They are re-exported here under the names that configs and saved
``config.yaml`` files use (``projects.dino.modeling.DINOTransformer``, ...).
"""

from detr_ext.layers import DINOTransformer, DINOTransformerDecoder, DINOTransformerEncoder
from detr_ext.modeling import DINOCriterion

from .dino import DINO

__all__ = [
    "DINO",
    "DINOCriterion",
    "DINOTransformer",
    "DINOTransformerDecoder",
    "DINOTransformerEncoder",
]
