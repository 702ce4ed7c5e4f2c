"""The bundled shapes images as a panoptic dataset (``detr_ext.data.datasets.shapes_panoptic``):
things circle / square / triangle and the stuff ``background``, for DETR-style panoptic
segmentation on a CPU.

Loading this file registers ``shapes_panoptic_train`` (1000 images) and ``shapes_panoptic_val``
(200) under ``$DETR_EXT_DATASETS/shapes`` (the images of ``shapes_train`` / ``shapes_val``,
plus ``panoptic_{split}/`` PNGs and ``annotations/panoptic_{split}.json``, generated the first
time a dataset is loaded). Category ids are detectron2's "standard" panoptic ones: one
contiguous space, the 3 things then ``background`` (so a model has 4 classes).

- ``dataloader.train``: :class:`~detr_ext.data.DetrPanopticDatasetMapper` with the
  augmentation of ``common/data/shapes.py``: every segment (things and the background) is one
  target, with its class, mask and the mask's box;
- ``dataloader.evaluator``: a list, which detectron2's ``inference_on_dataset`` runs as
  ``DatasetEvaluators``: ``COCOEvaluator`` for the things' box and mask AP (on the instances
  json of the split, ``json_file`` in the metadata) and ``COCOPanopticEvaluator`` for PQ / SQ /
  RQ. The model's outputs need ``"instances"`` (things only) and ``"panoptic_seg"``.

To use another root or size, re-register in a config that builds on this one::

    register_shapes_panoptic(root="/data/shapes_small", num_train=100, num_val=20, replace=True)
"""

from detectron2.config import LazyCall as L

from detr_ext.config import get_config
from detr_ext.data import DetrPanopticDatasetMapper
from detr_ext.data.datasets import register_shapes_panoptic
from detr_ext.evaluation import COCOEvaluator, COCOPanopticEvaluator

# root=None -> $DETR_EXT_DATASETS/shapes
register_shapes_panoptic(root=None, num_train=1000, num_val=200, seed=0, replace=True)

# The loaders of common/data/shapes.py (batch size, workers, augmentation) on the panoptic
# datasets with the panoptic mapper.
dataloader = get_config("common/data/shapes.py").dataloader
dataloader.train.dataset.names = "shapes_panoptic_train"
dataloader.train.mapper._target_ = DetrPanopticDatasetMapper
dataloader.train.mapper.mask_on = True
dataloader.test.dataset.names = "shapes_panoptic_val"
dataloader.test.mapper._target_ = DetrPanopticDatasetMapper

dataloader.evaluator = [
    L(COCOEvaluator)(
        dataset_name="shapes_panoptic_val", tasks=("bbox", "segm"), backend="auto", analyze=False
    ),
    L(COCOPanopticEvaluator)(dataset_name="shapes_panoptic_val", output_dir=None),
]
