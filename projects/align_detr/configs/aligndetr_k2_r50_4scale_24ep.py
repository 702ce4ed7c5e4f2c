"""Align-DETR (k = 2) R50 4-scale on COCO, 24 epochs (180k iterations at batch 16), lr drop
at epoch 20; otherwise the 12-epoch config. For the published accuracy see the paper
(Cai et al., 2023).
"""

from detr_ext.config import get_config

from .aligndetr_k2_r50_4scale_12ep import dataloader, model, optimizer, train

lr_multiplier = get_config("common/coco_schedule.py").lr_multiplier_24ep

train.output_dir = "./output/aligndetr_k2_r50_4scale_24ep"
train.max_iter = 24 * 7500

__all__ = ["dataloader", "lr_multiplier", "model", "optimizer", "train"]
