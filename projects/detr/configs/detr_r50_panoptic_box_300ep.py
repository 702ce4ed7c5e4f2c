"""Stage 1 of DETR's panoptic recipe: DETR-R50 trained to box things AND stuff on COCO panoptic.

Carion et al. (2020), as facebookresearch/detr trains its panoptic models: first a plain box
detector over all 133 panoptic classes (each stuff region is one box), 300 epochs with
``detr_r50_300ep.py``'s optimizer, schedule and clipping; then
``detr_segm_r50_panoptic_25ep.py`` freezes it and trains only the mask head. Ground-truth
boxes come from the panoptic segments (``DetrPanopticDatasetMapper``). Evaluation scores the
boxes of the 80 thing classes against COCO's instances json (stuff detections are dropped:
``drop_unknown_classes``).
"""

from detr_ext.config import get_config
from detr_ext.evaluation import COCOEvaluator

from .detr_r50_300ep import lr_multiplier, optimizer, train  # noqa: F401
from .models.detr_r50 import model

model.num_classes = 133  # detectron2's unified COCO panoptic classes: 80 things + 53 stuff

dataloader = get_config("common/data/coco_panoptic_detr.py").dataloader
dataloader.train.total_batch_size = 64
dataloader.train.num_workers = 16
dataloader.evaluator = dict(
    _target_=COCOEvaluator,
    dataset_name="${..test.dataset.names}",
    tasks=("bbox",),
    backend="auto",
    drop_unknown_classes=True,
)

train.output_dir = "./output/detr_r50_panoptic_box_300ep"
