"""DETR modeling: the meta-architectures (registered as ``"DETR"`` and, with DETR's
segmentation head, ``"DETRSegm"``).

DETR's networks live in ``detr_ext`` (``detr_ext.modeling.DETRDetectorBase`` and
``DETRSegmDetectorBase``, ``detr_ext.layers.detr_transformer``) so that projects scaffolded
from them do not import this one; the transformer classes are re-exported here under their
old import path.
"""

from detr_ext.layers import DetrTransformer, DetrTransformerDecoder, DetrTransformerEncoder

from .detr import DETR
from .detr_segm import DETRSegm

__all__ = [
    "DETR",
    "DETRSegm",
    "DetrTransformer",
    "DetrTransformerDecoder",
    "DetrTransformerEncoder",
]
