"""DINO modeling: transformer (encoder, decoder, two-stage selection), criterion, meta-arch."""

from .dino import DINO
from .dino_encoder_decoder import DINOTransformerDecoder, DINOTransformerEncoder
from .dino_transformer import DINOTransformer
from .dn_criterion import DINOCriterion

__all__ = [
    "DINO",
    "DINOCriterion",
    "DINOTransformer",
    "DINOTransformerDecoder",
    "DINOTransformerEncoder",
]
