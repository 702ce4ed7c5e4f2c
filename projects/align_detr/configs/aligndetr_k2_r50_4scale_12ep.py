"""Align-DETR (k = 2) R50 4-scale on COCO, 12 epochs (90k iterations at batch 16), lr drop at
epoch 11.

Cai et al. (2023) report 50.2 box AP on COCO val2017 for this model. Schedule, optimizer and
data are those of DINO's 12-epoch config (detrex/Align-DETR's config.yaml: AdamW lr 1e-4,
weight decay 1e-4, milestones 82500 / 90000, gradient clipping at norm 0.1, R-50 ImageNet
weights, DETR multi-scale + crop augmentation).
"""

from detr_ext.config import get_config

from .models.align_detr_r50 import model

_recipe = get_config("common/coco_deformable_recipe.py")
dataloader, optimizer, train = _recipe.dataloader, _recipe.optimizer, _recipe.train
lr_multiplier = _recipe.lr_multiplier
train.output_dir = "./output/aligndetr_k2_r50_4scale_12ep"

__all__ = ["dataloader", "lr_multiplier", "model", "optimizer", "train"]
