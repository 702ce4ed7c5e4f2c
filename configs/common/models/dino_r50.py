"""DINO's network, ResNet-50, 4 feature levels, 900 queries, 100 denoising queries (detrex's
``dino_r50_4scale`` model), with DINO's criterion.

Shared by the projects built on DINO's network: ``_target_`` is the unregistered
:class:`~detr_ext.modeling.DINODetectorBase`, and each project's model config sets its own
registered class (``projects/dino``: ``DINO``; ``projects/align_detr``: ``AlignDETR``, which
also replaces the criterion)::

    model = get_config("common/models/dino_r50.py").model
    model._target_ = DINO

Parameter names and shapes equal detrex's ``dino_r50_4scale``; DINO's 5-scale configs add the
res2 level on this model.
"""

from detectron2.config import LazyCall as L

from detr_ext.config import get_config
from detr_ext.layers import (
    DINOTransformer,
    DINOTransformerDecoder,
    DINOTransformerEncoder,
)
from detr_ext.modeling import DINOCriterion, DINODetectorBase, HungarianMatcher

_r50 = get_config("common/models/resnet50_4scale.py")

model = L(DINODetectorBase)(
    backbone=_r50.backbone,
    position_embedding=_r50.position_embedding,
    neck=_r50.neck,
    transformer=L(DINOTransformer)(
        encoder=L(DINOTransformerEncoder)(
            embed_dim=256,
            num_heads=8,
            feedforward_dim=2048,
            attn_dropout=0.0,
            ffn_dropout=0.0,
            num_layers=6,
            post_norm=False,
            num_feature_levels="${..num_feature_levels}",
        ),
        decoder=L(DINOTransformerDecoder)(
            embed_dim=256,
            num_heads=8,
            feedforward_dim=2048,
            attn_dropout=0.0,
            ffn_dropout=0.0,
            num_layers=6,
            num_feature_levels="${..num_feature_levels}",
        ),
        num_feature_levels=4,
        two_stage_num_proposals="${..num_queries}",
    ),
    embed_dim=256,
    num_classes=80,
    num_queries=900,
    aux_loss=True,
    select_box_nums_for_evaluation=300,
    criterion=L(DINOCriterion)(
        num_classes="${..num_classes}",
        matcher=L(HungarianMatcher)(
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
        loss_class_type="focal_loss",
        alpha=0.25,
        gamma=2.0,
    ),
    dn_number=100,
    label_noise_ratio=0.5,
    box_noise_scale=1.0,
    **_r50.pixels,
)
