"""DINO modeling: transformer (encoder, decoder, two-stage selection) and meta-arch.

``DINOCriterion`` lives in :mod:`detr_ext.modeling` (shared with Align-DETR) and is
re-exported here, the name configs and saved ``config.yaml`` files use.
"""

from detr_ext.modeling import DINOCriterion

from .dino import DINO
from .dino_encoder_decoder import DINOTransformerDecoder, DINOTransformerEncoder
from .dino_transformer import DINOTransformer

__all__ = [
    "DINO",
    "DINOCriterion",
    "DINOTransformer",
    "DINOTransformerDecoder",
    "DINOTransformerEncoder",
]
