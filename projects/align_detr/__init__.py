"""Align-DETR (Cai et al., 2023): DINO trained with mixed many-to-one matching, the
IoU-aware BCE loss and prime-sample weighting.

Importing this package registers the ``AlignDETR`` meta-architecture with detectron2's
``META_ARCH_REGISTRY``.
"""

from .modeling import AlignDETR, AlignDETRCriterion

__all__ = ["AlignDETR", "AlignDETRCriterion"]
