"""DETRSegm: DETR with its segmentation head, registered with detectron2."""

from __future__ import annotations

from detectron2.modeling import META_ARCH_REGISTRY

from detr_ext.modeling import DETRSegmDetectorBase

__all__ = ["DETRSegm"]


@META_ARCH_REGISTRY.register()
class DETRSegm(DETRSegmDetectorBase):
    """DETR's segmentation model (``DETRsegm`` of Carion et al., 2020):
    :class:`~detr_ext.modeling.DETRSegmDetectorBase` registered with detectron2's
    ``META_ARCH_REGISTRY``, trained with a :class:`~detr_ext.modeling.SegmCriterion`
    (DETR's losses plus sigmoid focal and dice mask losses).

    Takes the arguments of ``DETRSegmDetectorBase`` (DETR's, plus ``bbox_attention``,
    ``mask_head``, ``mask_in_features``, ``freeze_detector``, the panoptic options) and
    follows detectron2's model contract: training returns a dict of weighted losses,
    inference ``[{"instances": Instances}]`` with ``pred_masks`` at the original image size,
    plus ``"panoptic_seg"`` with ``panoptic_on``.
    """
