"""DETR-R50-DC5 on COCO, 500 epochs (learning rate drop at epoch 400): the paper's 43.3 AP model.

The dilated backbone of ``detr_r50_dc5_300ep.py`` with the schedule of ``detr_r50_500ep.py``.
"""

# Re-exported: a LazyConfig file's config is its top-level names.
from .detr_r50_500ep import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401
from .detr_r50_dc5_300ep import model as _dc5_model

model.backbone = _dc5_model.backbone
train.output_dir = "./output/detr_r50_dc5_500ep"
