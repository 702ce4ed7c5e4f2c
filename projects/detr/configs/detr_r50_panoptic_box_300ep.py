"""Stage 1 of DETR's panoptic recipe: DETR-R50 trained to box things AND stuff on COCO panoptic.

Carion et al. (2020), as facebookresearch/detr trains its panoptic models: first a plain box
detector over all 133 panoptic classes (each stuff region is one box), 300 epochs with DETR's
COCO recipe (``configs/common/coco_detr_recipe.py``: optimizer, schedule, clipping, batch
size); then ``detr_segm_r50_panoptic_25ep.py`` freezes it and trains only the mask head.
Ground-truth boxes come from the panoptic segments (``DetrPanopticDatasetMapper``). Evaluation
scores the boxes of the 80 thing classes against COCO's instances json (stuff detections are
dropped: ``drop_unknown_classes``).
"""

from detr_ext.config import get_config
from detr_ext.evaluation import COCOEvaluator

from .models.detr_r50 import model

model.num_classes = 133  # detectron2's unified COCO panoptic classes: 80 things + 53 stuff

_recipe = get_config("common/coco_detr_recipe.py")
optimizer, lr_multiplier, train = _recipe.optimizer, _recipe.lr_multiplier, _recipe.train

dataloader = get_config("common/data/coco_panoptic_detr.py").dataloader
# The recipe's loader sizes (64 images per batch, 16 workers) on the panoptic data.
dataloader.train.total_batch_size = _recipe.dataloader.train.total_batch_size
dataloader.train.num_workers = _recipe.dataloader.train.num_workers
dataloader.evaluator = dict(
    _target_=COCOEvaluator,
    dataset_name="${..test.dataset.names}",
    tasks=("bbox",),
    backend="auto",
    drop_unknown_classes=True,
)

train.output_dir = "./output/detr_r50_panoptic_box_300ep"
