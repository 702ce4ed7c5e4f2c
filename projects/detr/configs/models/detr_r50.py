"""DETR with a ResNet-50 backbone (detrex's DETR-R50): 6 + 6 transformer layers of width 256,
100 queries, COCO's 80 classes.

The shared recipe ``configs/common/models/detr_r50.py`` (DETR's network and criterion) built as
this project's registered ``DETR``. Images are RGB; the backbone is detectron2's ResNet with
torchvision-style strides (``stride_in_1x1=False``) and frozen BatchNorm.
"""

from detr_ext.config import get_config
from projects.detr.modeling import DETR

model = get_config("common/models/detr_r50.py").model
model._target_ = DETR
