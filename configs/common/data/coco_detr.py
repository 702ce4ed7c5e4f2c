"""COCO 2017 data for DETR-family detectors: the DETR multi-scale + random-crop training recipe.

Images are RGB uint8; the model normalizes them. Datasets are detectron2's builtin
``coco_2017_train`` / ``coco_2017_val``, found under ``$DETECTRON2_DATASETS/coco``
(default ``./datasets/coco``). Use in a config as::

    dataloader = get_config("common/data/coco_detr.py").dataloader
    dataloader.train.total_batch_size = 8
"""

import detectron2.data.transforms as T
from detectron2.config import LazyCall as L
from detectron2.data import (
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)
from omegaconf import OmegaConf

from detr_ext.data import DetrDatasetMapper
from detr_ext.evaluation import COCOEvaluator

# 480, 512, ..., 800: DETR's training scales for the shorter side.
TRAIN_SHORT_EDGES = tuple(range(480, 801, 32))

dataloader = OmegaConf.create()

dataloader.train = L(build_detection_train_loader)(
    dataset=L(get_detection_dataset_dicts)(names="coco_2017_train"),
    mapper=L(DetrDatasetMapper)(
        augmentation=[
            L(T.RandomFlip)(),
            L(T.ResizeShortestEdge)(
                short_edge_length=TRAIN_SHORT_EDGES, max_size=1333, sample_style="choice"
            ),
        ],
        # Taken with probability 0.5: rescale, crop a 384-600 px window, rescale again.
        augmentation_with_crop=[
            L(T.RandomFlip)(),
            L(T.ResizeShortestEdge)(short_edge_length=(400, 500, 600), sample_style="choice"),
            L(T.RandomCrop)(crop_type="absolute_range", crop_size=(384, 600)),
            L(T.ResizeShortestEdge)(
                short_edge_length=TRAIN_SHORT_EDGES, max_size=1333, sample_style="choice"
            ),
        ],
        is_train=True,
        mask_on=False,
        img_format="RGB",
    ),
    total_batch_size=16,
    num_workers=4,
)

dataloader.test = L(build_detection_test_loader)(
    dataset=L(get_detection_dataset_dicts)(names="coco_2017_val", filter_empty=False),
    mapper=L(DetrDatasetMapper)(
        augmentation=[L(T.ResizeShortestEdge)(short_edge_length=800, max_size=1333)],
        augmentation_with_crop=None,
        is_train=False,
        mask_on=False,
        img_format="${...train.mapper.img_format}",
    ),
    num_workers=4,
)

# COCO metrics through hotcoco when installed, else pycocotools (backend="pycocotools" forces
# it); analyze=True (or --analyze) adds TIDE errors and a confusion matrix. detr_ext.evaluation.
dataloader.evaluator = L(COCOEvaluator)(
    dataset_name="${..test.dataset.names}", backend="auto", analyze=False
)
