"""DETR-R50 on COCO: 300 epochs at a total batch size of 64, learning rate drop at epoch 200.

The recipe of Carion et al. (2020) as configured in detrex: AdamW with lr 1e-4 (1e-5 for the
backbone) and weight decay 1e-4, gradient clipping at norm 0.1, an ImageNet-pretrained
ResNet-50 (torchvision weights), DETR's multi-scale + random-crop augmentation.
"""

from detr_ext.config import get_config

# Re-exported: a LazyConfig file's config is its top-level names.
from .models.detr_r50 import model  # noqa: F401

# One epoch is 1848 iterations at batch 64 (COCO train2017, 118k images), as in detrex.
ITERS_PER_EPOCH = 1848
EPOCHS, DECAY_EPOCHS = 300, 200

dataloader = get_config("common/data/coco_detr.py").dataloader
dataloader.train.total_batch_size = 64
dataloader.train.num_workers = 16
# Images without objects are trained on too (negatives), as facebookresearch/detr does (its
# loader keeps every image; its detectron2 config sets FILTER_EMPTY_ANNOTATIONS: False).
dataloader.train.dataset.filter_empty = False

optimizer = get_config("common/optim.py").AdamW
optimizer.lr = 1e-4
optimizer.weight_decay = 1e-4
optimizer.params.lr_factor_func = lambda module_name: 0.1 if "backbone" in module_name else 1

# Step schedule: 1.0, then 0.1 from DECAY_EPOCHS on (milestones are in iterations).
lr_multiplier = get_config("common/coco_schedule.py").lr_multiplier_300ep
lr_multiplier.scheduler.milestones = [DECAY_EPOCHS * ITERS_PER_EPOCH, EPOCHS * ITERS_PER_EPOCH]

train = get_config("common/train.py").train
train.init_checkpoint = "detectron2://ImageNetPretrained/torchvision/R-50.pkl"
train.output_dir = "./output/detr_r50_300ep"
train.max_iter = EPOCHS * ITERS_PER_EPOCH
train.clip_grad.enabled = True
train.clip_grad.params.max_norm = 0.1
train.clip_grad.params.norm_type = 2
train.checkpointer.period = 10 * ITERS_PER_EPOCH
train.eval_period = 10 * ITERS_PER_EPOCH
train.device = "cuda"
