"""DINO R50 5-scale on COCO, 24 epochs (180k iterations at batch 16), lr drop at epoch 20.

Zhang et al. (ICLR 2023), Table 2, report 51.3 box AP on COCO val2017 for this model.

The 5-scale model of ``dino_r50_5scale_12ep.py`` with the 24-epoch recipe of
``dino_r50_4scale_24ep.py`` (schedule, images without objects kept, position embedding).
"""

from .dino_r50_4scale_24ep import dataloader, lr_multiplier, optimizer, train
from .dino_r50_4scale_24ep import model as _model_4scale_24ep
from .dino_r50_5scale_12ep import model

# The DINO authors' 24-epoch recipe (IDEA-Research/DINO, config/DINO/DINO_5scale.py:
# pe_temperatureH/W = 20; detrex has no 5-scale 24-epoch config): DAB-DETR's position
# embedding (temperature 20, no -0.5 offset), as the 4-scale 24-epoch config's.
model.position_embedding = _model_4scale_24ep.position_embedding

train.output_dir = "./output/dino_r50_5scale_24ep"

__all__ = ["dataloader", "lr_multiplier", "model", "optimizer", "train"]
