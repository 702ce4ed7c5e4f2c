"""DINO R50 5-scale on COCO, 24 epochs (180k iterations at batch 16), lr drop at epoch 20.

Zhang et al. (ICLR 2023), Table 2, report 51.3 box AP on COCO val2017 for this model.
"""

from detr_ext.config import get_config

from .dino_r50_5scale_12ep import dataloader, model, optimizer, train

lr_multiplier = get_config("common/coco_schedule.py").lr_multiplier_24ep

train.output_dir = "./output/dino_r50_5scale_24ep"
train.max_iter = 24 * 7500

__all__ = ["dataloader", "lr_multiplier", "model", "optimizer", "train"]
