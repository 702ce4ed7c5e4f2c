"""A small Deformable DETR for the bundled shapes dataset, trained from scratch on a CPU.

The shared recipe ``configs/common/deformable_detr_shapes.py`` (ResNet-18 with GroupNorm, 3
feature levels of width 128, 2 encoder + 2 decoder layers, 50 queries, 3 classes, 1000
iterations) built as this project's registered ``DeformableDETR``. A smoke test and a
tutorial, not a benchmark::

    python tools/train_net.py \
        --config-file projects/deformable_detr/configs/deformable_detr_shapes.py

Set ``model.with_box_refine=True`` (and ``model.as_two_stage=True``) on the command line for
the other variants.
"""

from detr_ext.config import get_config
from projects.deformable_detr.modeling import DeformableDETR

_shapes = get_config("common/deformable_detr_shapes.py")
dataloader = _shapes.dataloader
optimizer = _shapes.optimizer
lr_multiplier = _shapes.lr_multiplier
train = _shapes.train
model = _shapes.model

model._target_ = DeformableDETR
train.output_dir = "./output/deformable_detr_shapes"

__all__ = ["dataloader", "lr_multiplier", "model", "optimizer", "train"]
