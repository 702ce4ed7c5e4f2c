"""A small Align-DETR for the bundled shapes dataset (3 classes), trained from scratch on CPU.

The shared small-DINO shapes recipe (``configs/common/dino_shapes.py``, which DINO's shapes
config uses too: ResNet-18, 3 feature levels, width 128, 2 encoder and 3 decoder layers, 100
queries, 30 denoising queries, same schedule) with Align-DETR's meta-architecture and
criterion; ``match_num = [2, 2, 2, 1]`` for [encoder proposals, decoder layers 0-2]::

    python tools/train_net.py --config-file projects/align_detr/configs/align_detr_shapes.py \
        train.output_dir=./output/align_detr_shapes
"""

from detr_ext.config import get_config

from .models.align_detr_r50 import model as _align_detr_r50

_shapes = get_config("common/dino_shapes.py")

dataloader = _shapes.dataloader
optimizer = _shapes.optimizer
lr_multiplier = _shapes.lr_multiplier
train = _shapes.train

model = _shapes.model
model._target_ = _align_detr_r50._target_
model.criterion = _align_detr_r50.criterion
model.criterion.match_num = [2, 2, 2, 1]

train.output_dir = "./output/align_detr_shapes"

__all__ = ["dataloader", "lr_multiplier", "model", "optimizer", "train"]
