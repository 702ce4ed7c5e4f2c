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

from detectron2.config import LazyCall as L

from detr_ext.config import get_config
from detr_ext.modeling import ManyToOneMatcher
from projects.align_detr.modeling import AlignDETR, AlignDETRCriterion

model = get_config("common/models/dino_r50.py").model
model._target_ = AlignDETR
model.criterion = L(AlignDETRCriterion)(
    num_classes="${..num_classes}",
    matcher=L(ManyToOneMatcher)(
        cost_class=2.0,
        cost_bbox=5.0,
        cost_giou=2.0,
        cost_class_type="focal_loss_cost",
        alpha=0.25,
        gamma=2.0,
    ),
    # The auxiliary (``_0`` .. ``_4``), encoder (``_enc``) and denoising auxiliary
    # (``_dn_0`` ..) losses are weighted by their longest base name in this dict.
    weight_dict={
        "loss_class": 1.0,
        "loss_bbox": 5.0,
        "loss_giou": 2.0,
        "loss_class_dn": 1.0,
        "loss_bbox_dn": 5.0,
        "loss_giou_dn": 2.0,
    },
    # Matches per target for [encoder proposals, decoder layer 0, ..., decoder layer 5].
    match_num=[2, 2, 2, 2, 2, 2, 1],
    tau=1.5,
    alpha=0.25,
    gamma=2.0,
)
