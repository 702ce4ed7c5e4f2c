"""Deformable DETR (Zhu et al., ICLR 2021): plain, iterative box refinement and two-stage.

Importing this package registers the ``DeformableDETR`` meta-architecture with detectron2's
``META_ARCH_REGISTRY``.
"""

from .modeling import (
    DeformableCriterion,
    DeformableDETR,
    DeformableDetrTransformer,
    DeformableDetrTransformerDecoder,
    DeformableDetrTransformerEncoder,
)

__all__ = [
    "DeformableCriterion",
    "DeformableDETR",
    "DeformableDetrTransformer",
    "DeformableDetrTransformerDecoder",
    "DeformableDetrTransformerEncoder",
]
