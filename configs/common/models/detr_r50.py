"""DETR's network with a ResNet-50 backbone (detrex's DETR-R50): 6 + 6 transformer layers of
width 256, 100 queries, COCO's 80 classes, with DETR's set criterion. Images are RGB; the
backbone is detectron2's ResNet with torchvision-style strides (``stride_in_1x1=False``) and
frozen BatchNorm.

Shared by the projects built on DETR's network: ``_target_`` is the unregistered
:class:`~detr_ext.modeling.DETRDetectorBase`, and each project's model config sets its own
registered class (``projects/detr``: ``DETR``)::

    model = get_config("common/models/detr_r50.py").model
    model._target_ = DETR
"""

from detectron2.config import LazyCall as L
from detectron2.modeling.backbone import BasicStem, ResNet

from detr_ext.layers import (
    DetrTransformer,
    DetrTransformerDecoder,
    DetrTransformerEncoder,
    PositionEmbeddingSine,
)
from detr_ext.modeling import DETRDetectorBase, HungarianMatcher, SetCriterion

model = L(DETRDetectorBase)(
    backbone=L(ResNet)(
        stem=L(BasicStem)(in_channels=3, out_channels=64, norm="FrozenBN"),
        stages=L(ResNet.make_default_stages)(depth=50, stride_in_1x1=False, norm="FrozenBN"),
        out_features=["res5"],
        freeze_at=1,
    ),
    in_features=["res5"],
    in_channels=2048,
    position_embedding=L(PositionEmbeddingSine)(
        num_pos_feats=128, temperature=10000, normalize=True
    ),
    transformer=L(DetrTransformer)(
        encoder=L(DetrTransformerEncoder)(
            embed_dim=256,
            num_heads=8,
            attn_dropout=0.1,
            feedforward_dim=2048,
            ffn_dropout=0.1,
            num_layers=6,
            post_norm=False,
        ),
        decoder=L(DetrTransformerDecoder)(
            embed_dim=256,
            num_heads=8,
            attn_dropout=0.1,
            feedforward_dim=2048,
            ffn_dropout=0.1,
            num_layers=6,
            return_intermediate=True,
            post_norm=True,
        ),
    ),
    embed_dim=256,
    num_classes=80,
    num_queries=100,
    criterion=L(SetCriterion)(
        num_classes="${..num_classes}",
        matcher=L(HungarianMatcher)(
            cost_class=1.0, cost_bbox=5.0, cost_giou=2.0, cost_class_type="ce_cost"
        ),
        # Auxiliary losses (loss_class_0, ...) take the weight of their base name.
        weight_dict={"loss_class": 1.0, "loss_bbox": 5.0, "loss_giou": 2.0},
        loss_class_type="ce_loss",
        eos_coef=0.1,
    ),
    aux_loss=True,
    pixel_mean=[123.675, 116.280, 103.530],
    pixel_std=[58.395, 57.120, 57.375],
    input_format="RGB",
)
