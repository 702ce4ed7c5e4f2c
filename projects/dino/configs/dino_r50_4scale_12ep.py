"""DINO R50 4-scale on COCO, 12 epochs (90k iterations at batch 16), lr drop at epoch 11.

Zhang et al. (ICLR 2023), Table 1, report 49.0 box AP on COCO val2017 for this model.
"""

from detr_ext.config import get_config

from .models.dino_r50 import model

_recipe = get_config("common/coco_deformable_recipe.py")
dataloader, optimizer, train = _recipe.dataloader, _recipe.optimizer, _recipe.train
lr_multiplier = _recipe.lr_multiplier
train.output_dir = "./output/dino_r50_4scale_12ep"

__all__ = ["dataloader", "lr_multiplier", "model", "optimizer", "train"]
