"""Grounding DINO R50 4-scale trained on COCO detection with category-name prompts, 12 epochs
(90k iterations at batch 16), lr drop at epoch 11: DINO's COCO recipe with the text encoder
frozen. Prompt with other phrases at inference (``tools/demo.py --prompt``)."""

from detr_ext.config import get_config

from .models.grounding_dino_r50 import model

_recipe = get_config("common/coco_deformable_recipe.py")
dataloader, optimizer, train = _recipe.dataloader, _recipe.optimizer, _recipe.train
lr_multiplier = _recipe.lr_multiplier
train.output_dir = "./output/grounding_dino_r50_4scale_12ep"

__all__ = ["dataloader", "lr_multiplier", "model", "optimizer", "train"]
