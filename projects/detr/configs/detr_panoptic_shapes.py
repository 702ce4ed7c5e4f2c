"""A small DETR with its segmentation head for panoptic segmentation of the bundled shapes
dataset (things: circle, square, triangle; stuff: background), trained jointly from scratch
on a CPU.

``detr_segm_shapes.py`` over 4 classes (detectron2's unified contiguous order of
``shapes_panoptic_*``: the 3 things, then ``background``) with ``panoptic_on``: inference
returns ``"panoptic_seg"`` (DETR's 0.85 score threshold, MaskFormer-style merging,
:func:`~detr_ext.modeling.combine_panoptic`) and ``"instances"`` of the things only. Ground
truth comes from the panoptic PNGs (``DetrPanopticDatasetMapper``: each segment is one target,
its box the mask's box); evaluation reports PQ / SQ / RQ and the things' box and mask AP.
Run it with::

    python tools/train_net.py --config-file projects/detr/configs/detr_panoptic_shapes.py
"""

from detr_ext.config import get_config
from projects.detr.modeling import DETRSegm

_shapes = get_config("common/detr_segm_shapes.py")
optimizer = _shapes.optimizer
lr_multiplier = _shapes.lr_multiplier
train = _shapes.train
model = _shapes.model

model._target_ = DETRSegm
model.num_classes = 4
model.panoptic_on = True
model.is_thing = [True, True, True, False]

dataloader = get_config("common/data/shapes_panoptic.py").dataloader
for _split in ("train", "test"):
    _mapper, _recipe = dataloader[_split].mapper, _shapes.dataloader[_split].mapper
    _mapper.augmentation = _recipe.augmentation
    _mapper.augmentation_with_crop = _recipe.augmentation_with_crop
    dataloader[_split].num_workers = _shapes.dataloader[_split].num_workers
dataloader.train.total_batch_size = _shapes.dataloader.train.total_batch_size

train.output_dir = "./output/detr_panoptic_shapes"

__all__ = ["dataloader", "lr_multiplier", "model", "optimizer", "train"]
