"""The Deformable DETR meta-architecture: detr_ext's Deformable DETR network registered with
detectron2."""

from __future__ import annotations

from detectron2.modeling import META_ARCH_REGISTRY

from detr_ext.modeling import DeformableDETRDetectorBase

__all__ = ["DeformableDETR"]


@META_ARCH_REGISTRY.register()
class DeformableDETR(DeformableDETRDetectorBase):
    """Deformable DETR (Zhu et al., ICLR 2021):
    :class:`~detr_ext.modeling.DeformableDETRDetectorBase` registered with detectron2's
    ``META_ARCH_REGISTRY``, trained with a :class:`~detr_ext.modeling.DeformableCriterion`.

    Takes the arguments of ``DeformableDETRDetectorBase`` (backbone, position embedding, neck,
    a :class:`~detr_ext.layers.DeformableDetrTransformer`, ``num_queries``,
    ``with_box_refine``, ``as_two_stage``, ...) and follows detectron2's model contract:
    training returns a dict of weighted losses, inference ``[{"instances": Instances}]`` at the
    original image size (see ``DeformableDETRDetectorBase`` for the outputs of
    ``forward_outputs``).
    """
