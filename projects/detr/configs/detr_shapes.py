"""A small DETR trained from scratch on the bundled shapes dataset, on a CPU in minutes.

The shared recipe ``configs/common/detr_shapes.py`` (ResNet-18 with GroupNorm, a 128-wide
transformer with 2 encoder and 2 decoder layers, 30 queries, 3 classes, images of 224-320 px,
300 iterations of batch 4, seed 0) built as this project's registered ``DETR``. A training
step takes about 1 s on 2 CPU cores; the 300 iterations bring the total loss from ~16 to
~8.5. Meant for smoke tests, tutorials and debugging the training loop, not for accuracy:
DETR needs far longer to converge. Run it with::

    python tools/train_net.py --config-file projects/detr/configs/detr_shapes.py \
        train.output_dir=./output/detr_shapes
"""

from detr_ext.config import get_config
from projects.detr.modeling import DETR

_shapes = get_config("common/detr_shapes.py")
dataloader = _shapes.dataloader
optimizer = _shapes.optimizer
lr_multiplier = _shapes.lr_multiplier
train = _shapes.train
model = _shapes.model

model._target_ = DETR
train.output_dir = "./output/detr_shapes"

__all__ = ["dataloader", "lr_multiplier", "model", "optimizer", "train"]
