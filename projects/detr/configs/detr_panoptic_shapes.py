"""A small DETR with its segmentation head for panoptic segmentation of the bundled shapes
dataset (things: circle, square, triangle; stuff: background), trained jointly from scratch
on a CPU.

The shared recipe ``configs/common/detr_panoptic_shapes.py`` (``detr_segm_shapes.py``'s
network over 4 classes, the 3 things then ``background``, with ``panoptic_on``) built as this
project's registered ``DETRSegm``: inference returns ``"panoptic_seg"`` (DETR's 0.85 score
threshold, MaskFormer-style merging, :func:`~detr_ext.modeling.combine_panoptic`) and
``"instances"`` of the things only. Ground truth comes from the panoptic PNGs
(``DetrPanopticDatasetMapper``: each segment is one target, its box the mask's box);
evaluation reports PQ / SQ / RQ and the things' box and mask AP. Run it with::

    python tools/train_net.py --config-file projects/detr/configs/detr_panoptic_shapes.py
"""

from detr_ext.config import get_config
from projects.detr.modeling import DETRSegm

_shapes = get_config("common/detr_panoptic_shapes.py")
dataloader = _shapes.dataloader
optimizer = _shapes.optimizer
lr_multiplier = _shapes.lr_multiplier
train = _shapes.train
model = _shapes.model

model._target_ = DETRSegm
train.output_dir = "./output/detr_panoptic_shapes"

__all__ = ["dataloader", "lr_multiplier", "model", "optimizer", "train"]
