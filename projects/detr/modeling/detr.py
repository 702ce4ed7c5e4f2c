"""The DETR meta-architecture: detr_ext's DETR network registered with detectron2."""

from __future__ import annotations

from detectron2.modeling import META_ARCH_REGISTRY

from detr_ext.modeling import DETRDetectorBase

__all__ = ["DETR"]


@META_ARCH_REGISTRY.register()
class DETR(DETRDetectorBase):
    """DETR: End-to-End Object Detection with Transformers (Carion et al., 2020):
    :class:`~detr_ext.modeling.DETRDetectorBase` registered with detectron2's
    ``META_ARCH_REGISTRY``, trained with a :class:`~detr_ext.modeling.SetCriterion`
    (softmax ``"ce_loss"``).

    Takes the arguments of ``DETRDetectorBase`` (backbone, ``in_features``, ``in_channels``,
    position embedding, a :class:`~detr_ext.layers.DetrTransformer`, ``num_queries``, ...) and
    follows detectron2's model contract: training returns a dict of weighted losses, inference
    ``[{"instances": Instances}]`` at the original image size (see ``DETRDetectorBase`` for
    the outputs of ``forward_outputs``).
    """
