"""DINO (Zhang et al., ICLR 2023): DETR with improved denoising anchor boxes.

Importing this package registers the ``DINO`` meta-architecture with detectron2's
``META_ARCH_REGISTRY``.
"""

from .modeling import (
    DINO,
    DINOCriterion,
    DINOTransformer,
    DINOTransformerDecoder,
    DINOTransformerEncoder,
)

__all__ = [
    "DINO",
    "DINOCriterion",
    "DINOTransformer",
    "DINOTransformerDecoder",
    "DINOTransformerEncoder",
]
