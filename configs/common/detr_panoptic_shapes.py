"""Shared recipe: the small shapes DETR with its segmentation head (``common/detr_segm_shapes.py``)
for panoptic segmentation of the bundled shapes dataset (things: circle, square, triangle;
stuff: background), trained jointly from scratch on a CPU.

``common/detr_segm_shapes.py`` over 4 classes (detectron2's unified contiguous order of
``shapes_panoptic_*``: the 3 things, then ``background``) with ``panoptic_on``: inference
returns ``"panoptic_seg"`` (DETR's 0.85 score threshold, MaskFormer-style merging,
:func:`~detr_ext.modeling.combine_panoptic`) and ``"instances"`` of the things only. Ground
truth comes from the panoptic PNGs (``common/data/shapes_panoptic.py``,
``DetrPanopticDatasetMapper``: each segment is one target, its box the mask's box), with the
augmentation, workers and batch size of ``common/detr_shapes.py``; evaluation reports PQ / SQ /
RQ and the things' box and mask AP.

``model._target_`` is the unregistered :class:`~detr_ext.modeling.DETRSegmDetectorBase`; a
project's shapes config sets its registered class
(``projects/detr/configs/detr_panoptic_shapes.py``).
"""

from detr_ext.config import get_config

from .detr_segm_shapes import lr_multiplier, model, optimizer, train, with_detr_shapes_loading

model.num_classes = 4
model.panoptic_on = True
model.is_thing = [True, True, True, False]

dataloader = with_detr_shapes_loading(get_config("common/data/shapes_panoptic.py").dataloader)

__all__ = ["dataloader", "lr_multiplier", "model", "optimizer", "train"]
