"""Deformable DETR, ResNet-50, 4 feature levels, 300 queries: detrex's model config.

The shared recipe ``configs/common/models/deformable_detr_r50.py`` (Deformable DETR's network
and criterion, every value detrex's) built as this project's registered ``DeformableDETR``.
The plain variant; the box-refinement and two-stage configs flip ``with_box_refine`` /
``as_two_stage`` on this model (the transformer follows through the interpolations).
"""

from detr_ext.config import get_config
from projects.deformable_detr.modeling import DeformableDETR

model = get_config("common/models/deformable_detr_r50.py").model
model._target_ = DeformableDETR
