"""DINO R50 5-scale on COCO, 24 epochs (180k iterations at batch 16), lr drop at epoch 20.

Zhang et al. (ICLR 2023), Table 2, report 51.3 box AP on COCO val2017 for this model.
"""

from detr_ext.config import get_config

from .dino_r50_5scale_12ep import dataloader, model, optimizer, train

lr_multiplier = get_config("common/coco_schedule.py").lr_multiplier_24ep

# The DINO authors' 24-epoch recipe (IDEA-Research/DINO, config/DINO/DINO_5scale.py:
# pe_temperatureH/W = 20; detrex has no 5-scale 24-epoch config): DAB-DETR's position
# embedding (temperature 20, no -0.5 offset) and training images without objects kept.
model.position_embedding.temperature = 20
model.position_embedding.offset = 0.0
dataloader.train.dataset.filter_empty = False

train.output_dir = "./output/dino_r50_5scale_24ep"
train.max_iter = 24 * 7500

__all__ = ["dataloader", "lr_multiplier", "model", "optimizer", "train"]
