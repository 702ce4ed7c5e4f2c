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

_recipe = get_config("common/coco_deformable_recipe.py")
dataloader, optimizer, train = _recipe.dataloader, _recipe.optimizer, _recipe.train
lr_multiplier = get_config("common/coco_schedule.py").lr_multiplier_50ep
train.max_iter = 50 * 7500
train.output_dir = "./output/deformable_detr_r50_50ep"
