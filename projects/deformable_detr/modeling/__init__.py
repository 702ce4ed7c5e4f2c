"""Deformable DETR modeling: the meta-architecture (registered as ``"DeformableDETR"``).

Deformable DETR's network and criterion live in ``detr_ext``
(``detr_ext.modeling.DeformableDETRDetectorBase``, ``detr_ext.modeling.DeformableCriterion``,
``detr_ext.layers.deformable_detr_transformer`` and ``deformable_detr_encoder_decoder``) so that
projects scaffolded from it do not import this one; those classes are re-exported here under
their old import path.
"""

from detr_ext.layers import (
    DeformableDetrTransformer,
    DeformableDetrTransformerDecoder,
    DeformableDetrTransformerEncoder,
)
from detr_ext.modeling import DeformableCriterion

from .deformable_detr import DeformableDETR

__all__ = [
    "DeformableCriterion",
    "DeformableDETR",
    "DeformableDetrTransformer",
    "DeformableDetrTransformerDecoder",
    "DeformableDetrTransformerEncoder",
]
