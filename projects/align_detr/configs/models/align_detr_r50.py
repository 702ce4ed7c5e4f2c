"""Align-DETR, ResNet-50, 4 feature levels: the shared DINO R50 recipe
(``configs/common/models/dino_r50.py``: 900 queries, 6 + 6 layers of width 256, 100 denoising
queries) built as this project's ``AlignDETR``, with Align-DETR's criterion.

Values from detrex/Align-DETR's ``aligndetr_k=2_r50_4scale_12ep`` config: mixed matcher with
class / L1 / GIoU costs 2 / 5 / 2 (focal-loss class cost, alpha 0.25, gamma 2),
``match_num = [2, 2, 2, 2, 2, 2, 1]`` for [encoder proposals, decoder layers 0-5] (k = 2
everywhere but the last decoder layer), ``tau = 1.5``, IA-BCE ``alpha = 0.25``,
``gamma = 2``, loss weights class 1 / L1 5 / GIoU 2 for every layer, the encoder and the
denoising queries. Parameter names and shapes equal detrex's.
"""

from detr_ext.config import get_config
from detr_ext.modeling import ManyToOneMatcher
from projects.align_detr.modeling import AlignDETR, AlignDETRCriterion

model = get_config("common/models/dino_r50.py").model
model._target_ = AlignDETR
# DINO's criterion (weights class 1 / L1 5 / GIoU 2 for every layer, the encoder and the
# denoising queries; matching costs 2 / 5 / 2) with Align-DETR's loss and matcher.
model.criterion._target_ = AlignDETRCriterion
model.criterion.matcher._target_ = ManyToOneMatcher
# IA-BCE takes the place of the focal loss; alpha and gamma (0.25, 2) stay.
model.criterion.pop("loss_class_type")
model.criterion.update(
    # Matches per target for [encoder proposals, decoder layer 0, ..., decoder layer 5].
    match_num=[2, 2, 2, 2, 2, 2, 1],
    tau=1.5,
)
