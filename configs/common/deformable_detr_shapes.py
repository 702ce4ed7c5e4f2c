"""Shared recipe: a small Deformable DETR network for the bundled shapes dataset (3 classes),
trained from scratch on a CPU, with its data, optimizer, schedule and training options.

ResNet-18 (GroupNorm, nothing frozen, no pretrained weights), 3 feature levels of width 128,
2 encoder + 2 decoder layers, 50 queries, 3 classes, 1000 iterations. A smoke test and a
tutorial, not a benchmark.

It shrinks ``common/models/deformable_detr_r50.py``, so ``model._target_`` is the unregistered
:class:`~detr_ext.modeling.DeformableDETRDetectorBase`; a project's shapes config sets its
registered class and its output folder
(``projects/deformable_detr/configs/deformable_detr_shapes.py``)::

    _shapes = get_config("common/deformable_detr_shapes.py")
    dataloader, optimizer = _shapes.dataloader, _shapes.optimizer
    lr_multiplier, train, model = _shapes.lr_multiplier, _shapes.train, _shapes.model
    model._target_ = DeformableDETR
    train.output_dir = "./output/deformable_detr_shapes"
"""

from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec
from torch import nn

from detr_ext.config import default_X_scheduler, get_config

model = get_config("common/models/deformable_detr_r50.py").model

EMBED_DIM = 128
# 1000 iterations of batch 4 (4 passes over the 1000 training images), lr drop at 800; a few
# seconds per iteration on 2 CPU cores.
MAX_ITER, DECAY_ITER = 1000, 800

dataloader = get_config("common/data/shapes.py").dataloader
optimizer = get_config("common/optim.py").AdamW
lr_multiplier = default_X_scheduler(MAX_ITER // 100, DECAY_ITER // 100, base_steps=100)
train = get_config("common/train.py").train

model.backbone.depth = 18
model.backbone.out_features = ("res3", "res4", "res5")
model.backbone.norm = "GN"
model.backbone.freeze_at = 0
model.neck.input_shapes = {
    "res3": ShapeSpec(channels=128, stride=8),
    "res4": ShapeSpec(channels=256, stride=16),
    "res5": ShapeSpec(channels=512, stride=32),
}
model.neck.out_channels = EMBED_DIM
model.neck.norm_layer = L(nn.GroupNorm)(num_groups=32, num_channels=EMBED_DIM)
model.neck.num_outs = 3
model.position_embedding.num_pos_feats = EMBED_DIM // 2
model.transformer.num_feature_levels = 3
for _part in (model.transformer.encoder, model.transformer.decoder):
    _part.embed_dim = EMBED_DIM
    _part.feedforward_dim = 4 * EMBED_DIM
    _part.num_layers = 2
del _part  # a config file's top-level names are its config
model.embed_dim = EMBED_DIM
model.num_queries = 50
model.num_classes = 3
model.select_box_nums_for_evaluation = 50

train.init_checkpoint = ""
train.device = "cpu"
train.max_iter = MAX_ITER
train.eval_period = 500
train.checkpointer.period = 500
train.log_period = 20
train.clip_grad.enabled = True
train.clip_grad.params.max_norm = 0.1
train.clip_grad.params.norm_type = 2

optimizer.lr = 2e-4
optimizer.weight_decay = 1e-4
optimizer.params.lr_factor_func = lambda name: (
    0.1 if "sampling_offsets" in name or "reference_points" in name else 1
)
