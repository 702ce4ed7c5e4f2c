"""Deformable DETR modeling: transformer (encoder, decoder), criterion and meta-architecture."""

from .deformable_criterion import DeformableCriterion
from .deformable_detr import DeformableDETR
from .deformable_transformer import DeformableDetrTransformer
from .encoder_decoder import DeformableDetrTransformerDecoder, DeformableDetrTransformerEncoder

__all__ = [
    "DeformableCriterion",
    "DeformableDETR",
    "DeformableDetrTransformer",
    "DeformableDetrTransformerDecoder",
    "DeformableDetrTransformerEncoder",
]
