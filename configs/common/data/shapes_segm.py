"""The bundled shapes dataset for instance segmentation: ``common/data/shapes.py`` (same
images, same registration of ``shapes_train`` / ``shapes_val`` under
``$DETR_EXT_DATASETS/shapes``) with masks in training and box + mask AP in evaluation.

Every annotation's ``segmentation`` is the exact polygons of the object's visible region
(:mod:`detr_ext.data.datasets.shapes_geometry`); the train mapper keeps them
(``mask_on=True``) and moves them with the image through flips, resizes and crops, as
``PolygonMasks`` (``mask_format="auto"``: polygons stay polygons). Use in a config as::

    dataloader = get_config("common/data/shapes_segm.py").dataloader
"""

from detr_ext.config import get_config

# Registers shapes_train / shapes_val (root=None -> $DETR_EXT_DATASETS/shapes, 1000 / 200, seed 0).
dataloader = get_config("common/data/shapes.py").dataloader

dataloader.train.mapper.mask_on = True
dataloader.train.mapper.mask_format = "auto"
# Box AP and mask AP (masks against the polygons, rasterized by pycocotools).
dataloader.evaluator.tasks = ("bbox", "segm")
