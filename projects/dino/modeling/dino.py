"""DINO (Zhang et al., "DINO: DETR with Improved DeNoising Anchor Boxes for End-to-End Object
Detection", ICLR 2023) as a detectron2 meta-architecture.

The network (two-stage deformable transformer with contrastive denoising, mixed query
selection and look-forward-twice refinement) is :class:`~detr_ext.modeling.DINODetectorBase`,
which Align-DETR shares; this module registers it under DINO's name. Parameter names follow
detrex's ``DINO``, so detrex checkpoints give the same detections (see
``projects/dino/checkpoint.py``).
"""

from __future__ import annotations

from detectron2.modeling import META_ARCH_REGISTRY

from detr_ext.modeling import DINODetectorBase

__all__ = ["DINO"]


@META_ARCH_REGISTRY.register()
class DINO(DINODetectorBase):
    """DINO: :class:`~detr_ext.modeling.DINODetectorBase` registered with detectron2's
    ``META_ARCH_REGISTRY``, trained with a :class:`~detr_ext.modeling.DINOCriterion`.

    Takes the arguments of ``DINODetectorBase`` (backbone, position embedding, neck, a
    :class:`~detr_ext.layers.DINOTransformer`, ``num_queries``, ``dn_number``, ...) and
    follows detectron2's model contract: training returns a dict of weighted losses, inference
    ``[{"instances": Instances}]`` at the original image size (see ``DINODetectorBase`` for
    the outputs of ``forward_outputs``).
    """
