"""A small DETR with its segmentation head, trained jointly from scratch on the bundled shapes
dataset for boxes and instance masks, on a CPU.

The shared recipe ``configs/common/detr_segm_shapes.py`` (``common/detr_shapes.py``'s
ResNet-18 GN + 128-wide 2 + 2 layer transformer, 30 queries, 3 classes, plus DETR's
``bbox_attention`` + ``MaskHeadSmallConv`` over res4 / res3 / res2 and the focal + dice mask
losses) built as this project's registered ``DETRSegm``; evaluation reports box and mask AP.
Meant for smoke tests and tutorials, not for accuracy. Run it with::

    python tools/train_net.py --config-file projects/detr/configs/detr_segm_shapes.py
"""

from detr_ext.config import get_config
from projects.detr.modeling import DETRSegm

_shapes = get_config("common/detr_segm_shapes.py")
dataloader = _shapes.dataloader
optimizer = _shapes.optimizer
lr_multiplier = _shapes.lr_multiplier
train = _shapes.train
model = _shapes.model

model._target_ = DETRSegm
train.output_dir = "./output/detr_segm_shapes"

__all__ = ["dataloader", "lr_multiplier", "model", "optimizer", "train"]
