"""DETR modeling: the transformer and the meta-architecture (registered as ``"DETR"``)."""

from .detr import DETR
from .detr_transformer import DetrTransformer, DetrTransformerDecoder, DetrTransformerEncoder

__all__ = ["DETR", "DetrTransformer", "DetrTransformerDecoder", "DetrTransformerEncoder"]
