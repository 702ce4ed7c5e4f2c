"""Shared recipe: a small DETR network for the bundled shapes dataset (3 classes), trained from
scratch on a CPU in minutes, with its data, optimizer, schedule and training options.

ResNet-18 with GroupNorm (no pretrained weights, so no frozen BatchNorm statistics to rely
on), a 128-wide transformer with 2 encoder and 2 decoder layers, 30 queries, 3 classes, and
images of 224-320 px. A training step of batch 4 takes about 1 s on 2 CPU cores (several
times that on a busy machine); the default 300 iterations bring the total loss from ~16 to
~8.5. Meant for smoke tests, tutorials and debugging the training loop, not for accuracy:
DETR needs far longer to converge.

It shrinks ``common/models/detr_r50.py``, so ``model._target_`` is the unregistered
:class:`~detr_ext.modeling.DETRDetectorBase`; a project's shapes config sets its registered
class and its output folder (``projects/detr/configs/detr_shapes.py``)::

    _shapes = get_config("common/detr_shapes.py")
    dataloader, optimizer = _shapes.dataloader, _shapes.optimizer
    lr_multiplier, train, model = _shapes.lr_multiplier, _shapes.train, _shapes.model
    model._target_ = DETR
    train.output_dir = "./output/detr_shapes"
"""

import detectron2.data.transforms as T
from detectron2.config import LazyCall as L
from detectron2.modeling.backbone import BasicStem, ResNet
from detectron2.solver import WarmupParamScheduler
from fvcore.common.param_scheduler import MultiStepParamScheduler

from detr_ext.config import get_config

model = get_config("common/models/detr_r50.py").model

EMBED_DIM = 128
MAX_ITER = 300
TRAIN_SHORT_EDGES = (224, 256, 288, 320)
TEST_SHORT_EDGE = 288
MAX_SIZE = 400

model.backbone = L(ResNet)(
    stem=L(BasicStem)(in_channels=3, out_channels=64, norm="GN"),
    stages=L(ResNet.make_default_stages)(depth=18, norm="GN"),
    out_features=["res5"],
    freeze_at=0,
)
model.in_channels = 512
model.embed_dim = EMBED_DIM
model.position_embedding.num_pos_feats = EMBED_DIM // 2
for _part in (model.transformer.encoder, model.transformer.decoder):
    _part.embed_dim = EMBED_DIM
    _part.num_heads = 8
    _part.feedforward_dim = 512
    _part.num_layers = 2
    _part.attn_dropout = 0.0
    _part.ffn_dropout = 0.0
model.num_classes = 3
model.num_queries = 30
model.select_box_nums_for_evaluation = 30

dataloader = get_config("common/data/shapes.py").dataloader
dataloader.train.mapper.augmentation = [
    L(T.RandomFlip)(),
    L(T.ResizeShortestEdge)(
        short_edge_length=TRAIN_SHORT_EDGES, max_size=MAX_SIZE, sample_style="choice"
    ),
]
dataloader.train.mapper.augmentation_with_crop = [
    L(T.RandomFlip)(),
    L(T.ResizeShortestEdge)(short_edge_length=(192, 224, 256), sample_style="choice"),
    L(T.RandomCrop)(crop_type="absolute_range", crop_size=(160, 256)),
    L(T.ResizeShortestEdge)(
        short_edge_length=TRAIN_SHORT_EDGES, max_size=MAX_SIZE, sample_style="choice"
    ),
]
dataloader.test.mapper.augmentation = [
    L(T.ResizeShortestEdge)(short_edge_length=TEST_SHORT_EDGE, max_size=MAX_SIZE)
]
dataloader.train.total_batch_size = 4
dataloader.train.num_workers = 2
dataloader.test.num_workers = 2

optimizer = get_config("common/optim.py").AdamW
optimizer.lr = 2e-4
optimizer.weight_decay = 1e-4

# Short linear warmup, then 0.1x for the last fifth. Milestones are relative: the schedule
# stretches with train.max_iter.
lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(MultiStepParamScheduler)(values=[1.0, 0.1], milestones=[80, 100]),
    warmup_length=0.02,
    warmup_method="linear",
    warmup_factor=0.01,
)

train = get_config("common/train.py").train
train.init_checkpoint = ""
train.device = "cpu"
train.max_iter = MAX_ITER
train.eval_period = 0  # evaluate once, after the last iteration
train.checkpointer.period = 100
train.log_period = 20
train.clip_grad.enabled = True
train.clip_grad.params.max_norm = 0.1
train.seed = 0
