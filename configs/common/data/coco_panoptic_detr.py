"""COCO 2017 panoptic data for DETR-style panoptic segmentation: the DETR multi-scale +
random-crop recipe of ``common/data/coco_detr.py`` on detectron2's builtin
``coco_2017_train_panoptic`` / ``coco_2017_val_panoptic`` ("standard" version: 133 contiguous
classes, the 80 things first), found under ``$DETECTRON2_DATASETS/coco`` (``panoptic_train2017/``,
``annotations/panoptic_train2017.json``, ... next to the images).

- ``dataloader.train``: :class:`~detr_ext.data.DetrPanopticDatasetMapper`: every non-crowd
  segment (thing or stuff) is one target with its class, mask and the mask's box;
- ``dataloader.evaluator``: a list (run as detectron2's ``DatasetEvaluators``):
  ``COCOPanopticEvaluator`` for PQ / SQ / RQ, and ``COCOEvaluator`` for the things' box and mask
  AP on ``coco_2017_val``, the instances dataset of the same images and image ids (the
  panoptic dataset's metadata names that json too, but its ``thing_classes`` lists all 133
  classes, which COCOEvaluator's per-category table cannot take). The model's outputs need
  ``"panoptic_seg"`` and ``"instances"`` of the things only (contiguous ids 0-79).

Use in a config as::

    dataloader = get_config("common/data/coco_panoptic_detr.py").dataloader
"""

from detectron2.config import LazyCall as L

from detr_ext.config import get_config
from detr_ext.data import DetrPanopticDatasetMapper
from detr_ext.evaluation import COCOEvaluator, COCOPanopticEvaluator

dataloader = get_config("common/data/coco_detr.py").dataloader
dataloader.train.dataset.names = "coco_2017_train_panoptic"
dataloader.train.mapper._target_ = DetrPanopticDatasetMapper
dataloader.train.mapper.mask_on = True
dataloader.test.dataset.names = "coco_2017_val_panoptic"
dataloader.test.mapper._target_ = DetrPanopticDatasetMapper

dataloader.evaluator = [
    L(COCOPanopticEvaluator)(dataset_name="coco_2017_val_panoptic", output_dir=None),
    L(COCOEvaluator)(
        dataset_name="coco_2017_val", tasks=("bbox", "segm"), backend="auto", analyze=False
    ),
]
