"""Align-DETR (k = 2) R50 4-scale on COCO, 24 epochs (180k iterations at batch 16), lr drop
at epoch 20 (``configs/common/coco_deformable_recipe_24ep.py``); otherwise the 12-epoch config.
For the published accuracy see the paper (Cai et al., 2023).
"""

from detr_ext.config import get_config

from .aligndetr_k2_r50_4scale_12ep import model

_recipe = get_config("common/coco_deformable_recipe_24ep.py")
dataloader, optimizer, train = _recipe.dataloader, _recipe.optimizer, _recipe.train
lr_multiplier = _recipe.lr_multiplier
train.output_dir = "./output/aligndetr_k2_r50_4scale_24ep"

__all__ = ["dataloader", "lr_multiplier", "model", "optimizer", "train"]
