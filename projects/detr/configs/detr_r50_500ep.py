"""DETR-R50 on COCO: 500 epochs, learning rate drop at epoch 400 (the paper's long schedule).

Everything else as ``detr_r50_300ep.py``.
"""

from detr_ext.config import get_config

# Re-exported: a LazyConfig file's config is its top-level names.
from .detr_r50_300ep import dataloader, model, optimizer, train  # noqa: F401

lr_multiplier = get_config("common/coco_schedule.py").lr_multiplier_500ep
train.max_iter = 500 * 1848  # epochs of 1848 iterations at batch 64, as the recipe's
train.output_dir = "./output/detr_r50_500ep"
