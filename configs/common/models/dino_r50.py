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
from detectron2.layers import ShapeSpec
from torch import nn

from detr_ext.layers import (
    DINOTransformer,
    DINOTransformerDecoder,
    DINOTransformerEncoder,
    PositionEmbeddingSine,
)
from detr_ext.modeling import DINOCriterion, DINODetectorBase, HungarianMatcher
from detr_ext.modeling.backbones import build_resnet_backbone
from detr_ext.modeling.necks import ChannelMapper

model = L(DINODetectorBase)(
    # torchvision-style ResNet-50 (stride in the 3x3 conv), frozen BN, stem frozen.
    backbone=L(build_resnet_backbone)(
        depth=50,
        out_features=("res3", "res4", "res5"),
        norm="FrozenBN",
        freeze_at=1,
        stride_in_1x1=False,
    ),
    position_embedding=L(PositionEmbeddingSine)(
        num_pos_feats=128, temperature=10000, normalize=True, offset=-0.5
    ),
    neck=L(ChannelMapper)(
        input_shapes={
            "res3": ShapeSpec(channels=512, stride=8),
            "res4": ShapeSpec(channels=1024, stride=16),
            "res5": ShapeSpec(channels=2048, stride=32),
        },
        in_features=["res3", "res4", "res5"],
        out_channels=256,
        kernel_size=1,
        norm_layer=L(nn.GroupNorm)(num_groups=32, num_channels=256),
        # res3, res4, res5 and a stride-2 3x3 conv on res5.
        num_outs=4,
    ),
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
    # ImageNet statistics, RGB input in [0, 255] (torchvision R-50 weights).
    pixel_mean=[123.675, 116.280, 103.530],
    pixel_std=[58.395, 57.120, 57.375],
    input_format="RGB",
)
