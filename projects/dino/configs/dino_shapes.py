"""A small DINO for the bundled shapes dataset (3 classes), trained from scratch on CPU.

The shared recipe ``configs/common/dino_shapes.py`` (ResNet-18 at half width with BatchNorm, 3
feature levels, width 128, 2 encoder and 3 decoder layers (FFN 256), 100 queries and 30
denoising queries; 1850 iterations of 4 images at 128-192 px, any seed) built as this
project's registered ``DINO``. Trains in about 10-11 minutes on 2 CPU cores (``make train``)::

    python tools/train_net.py --config-file projects/dino/configs/dino_shapes.py \
        train.output_dir=./output/dino_shapes
"""

from detr_ext.config import get_config
from projects.dino.modeling import DINO

_shapes = get_config("common/dino_shapes.py")
dataloader = _shapes.dataloader
optimizer = _shapes.optimizer
lr_multiplier = _shapes.lr_multiplier
train = _shapes.train
model = _shapes.model

model._target_ = DINO
train.output_dir = "./output/dino_shapes"

__all__ = ["dataloader", "lr_multiplier", "model", "optimizer", "train"]
