"""DETR modeling: the meta-architecture (registered as ``"DETR"``).

DETR's network lives in ``detr_ext`` (``detr_ext.modeling.DETRDetectorBase``,
``detr_ext.layers.detr_transformer``) so that projects scaffolded from it do not import this
one; the transformer classes are re-exported here under their old import path.
"""

from detr_ext.layers import DetrTransformer, DetrTransformerDecoder, DetrTransformerEncoder

from .detr import DETR

__all__ = ["DETR", "DetrTransformer", "DetrTransformerDecoder", "DetrTransformerEncoder"]
