"""DETR-R50 with DETR's panoptic mask head, as this project's registered ``DETRSegm``: the
shared recipe ``configs/common/models/detr_segm_r50.py`` (133 COCO panoptic classes, panoptic
inference on). Load facebookresearch/detr's panoptic weights with the
``detr.facebookresearch_panoptic`` converter."""

from detr_ext.config import get_config
from projects.detr.modeling import DETRSegm

model = get_config("common/models/detr_segm_r50.py").model
model._target_ = DETRSegm
