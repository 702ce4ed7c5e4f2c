"""The bundled shapes dataset (``detr_ext.data.datasets.shapes``): 256-384 px images with
circles, squares and triangles, for quick CPU training runs, smoke tests and tutorials.

Loading this file registers ``shapes_train`` (1000 images) and ``shapes_val`` (200 images) under
``$DETR_EXT_DATASETS/shapes`` (default ``./datasets/shapes``). Registration is cheap; the images
are generated (deterministically, in well under a minute) the first time a dataset is loaded.

To use another root or size, re-register in a config that builds on this one; its call runs
after this file's, and ``replace=True`` swaps the registration::

    from detr_ext.data.datasets import register_shapes

    dataloader = get_config("common/data/shapes.py").dataloader
    register_shapes(root="/data/shapes_small", num_train=100, num_val=20, replace=True)

Only the registration changes: the dataset names (and so this config) stay the same. Every load
of this file restores the defaults below, so a config always means the same data.
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
from detr_ext.data.datasets import register_shapes
from detr_ext.evaluation import COCOEvaluator

# root=None -> $DETR_EXT_DATASETS/shapes
register_shapes(root=None, num_train=1000, num_val=200, seed=0, replace=True)

# DETR's recipe scaled to 256-384 px images: 224, 256, ..., 384 for the shorter side.
TRAIN_SHORT_EDGES = tuple(range(224, 385, 32))

dataloader = OmegaConf.create()

dataloader.train = L(build_detection_train_loader)(
    dataset=L(get_detection_dataset_dicts)(names="shapes_train"),
    mapper=L(DetrDatasetMapper)(
        augmentation=[
            L(T.RandomFlip)(),
            L(T.ResizeShortestEdge)(
                short_edge_length=TRAIN_SHORT_EDGES, max_size=512, sample_style="choice"
            ),
        ],
        # Taken with probability 0.5: rescale, crop a 160-256 px window, rescale again.
        augmentation_with_crop=[
            L(T.RandomFlip)(),
            L(T.ResizeShortestEdge)(short_edge_length=(192, 224, 256), sample_style="choice"),
            L(T.RandomCrop)(crop_type="absolute_range", crop_size=(160, 256)),
            L(T.ResizeShortestEdge)(
                short_edge_length=TRAIN_SHORT_EDGES, max_size=512, sample_style="choice"
            ),
        ],
        is_train=True,
        mask_on=False,
        img_format="RGB",
    ),
    total_batch_size=4,
    num_workers=2,
)

dataloader.test = L(build_detection_test_loader)(
    dataset=L(get_detection_dataset_dicts)(names="shapes_val", filter_empty=False),
    mapper=L(DetrDatasetMapper)(
        augmentation=[L(T.ResizeShortestEdge)(short_edge_length=320, max_size=512)],
        augmentation_with_crop=None,
        is_train=False,
        mask_on=False,
        img_format="${...train.mapper.img_format}",
    ),
    num_workers=2,
)

# COCO metrics through hotcoco when installed, else pycocotools (backend="pycocotools" forces
# it); analyze=True (or --analyze) adds TIDE errors and a confusion matrix. detr_ext.evaluation.
dataloader.evaluator = L(COCOEvaluator)(
    dataset_name="${..test.dataset.names}", backend="auto", analyze=False
)
