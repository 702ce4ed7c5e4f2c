"""Deformable DETR R50 on COCO, 50 epochs (7500 iterations of batch 16 each), lr drop at 40.

detrex's training recipe (``deformable_detr_r50_50ep.py``), which is not the authors': AdamW
with lr 1e-4 and 1e-5 for the backbone only (the authors: 2e-4, and 2e-5 for the backbone,
the sampling offsets and the reference points). detrex reports 44.9 box AP on COCO val2017
for this model, from a run with class-loss weight 2.0 instead of its config's 1.0 (see the
project README); Zhu et al. (ICLR 2021), Table 1: 43.8 with the authors' recipe.
"""

from detr_ext.config import get_config

# Re-exported: a LazyConfig file's config is its top-level names.
from .models.deformable_detr_r50 import model  # noqa: F401

dataloader = get_config("common/data/coco_detr.py").dataloader
optimizer = get_config("common/optim.py").AdamW
lr_multiplier = get_config("common/coco_schedule.py").lr_multiplier_50ep
train = get_config("common/train.py").train

train.init_checkpoint = "detectron2://ImageNetPretrained/torchvision/R-50.pkl"
train.output_dir = "./output/deformable_detr_r50_50ep"
train.max_iter = 50 * 7500
train.eval_period = 5000
train.log_period = 20
train.checkpointer.period = 5000
train.clip_grad.enabled = True
train.clip_grad.params.max_norm = 0.1
train.clip_grad.params.norm_type = 2
train.device = "cuda"

optimizer.lr = 1e-4
optimizer.betas = (0.9, 0.999)
optimizer.weight_decay = 1e-4
optimizer.params.lr_factor_func = lambda module_name: 0.1 if "backbone" in module_name else 1

dataloader.train.total_batch_size = 16
dataloader.train.num_workers = 16
