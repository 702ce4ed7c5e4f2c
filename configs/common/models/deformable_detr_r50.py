"""Deformable DETR's network, ResNet-50, 4 feature levels, 300 queries (detrex's model
config), with Deformable DETR's criterion.

Every value is detrex's (``projects/deformable_detr/configs/models/deformable_detr_r50.py``):
focal loss with weights class 1.0, L1 5.0, GIoU 2.0 (matching costs 2.0 / 5.0 / 2.0), and the
top 300 (query, class) pairs kept per image at inference (the authors' code keeps 100).

The plain variant; the box-refinement and two-stage configs flip ``with_box_refine`` /
``as_two_stage`` on this model (the transformer follows through the interpolations).

Shared by the projects built on Deformable DETR's network: ``_target_`` is the unregistered
:class:`~detr_ext.modeling.DeformableDETRDetectorBase`, and each project's model config sets
its own registered class (``projects/deformable_detr``: ``DeformableDETR``)::

    model = get_config("common/models/deformable_detr_r50.py").model
    model._target_ = DeformableDETR
"""

from detectron2.config import LazyCall as L

from detr_ext.config import get_config
from detr_ext.layers import (
    DeformableDetrTransformer,
    DeformableDetrTransformerDecoder,
    DeformableDetrTransformerEncoder,
)
from detr_ext.modeling import DeformableCriterion, DeformableDETRDetectorBase, HungarianMatcher

_r50 = get_config("common/models/resnet50_4scale.py")

model = L(DeformableDETRDetectorBase)(
    backbone=_r50.backbone,
    position_embedding=_r50.position_embedding,
    neck=_r50.neck,
    transformer=L(DeformableDetrTransformer)(
        encoder=L(DeformableDetrTransformerEncoder)(
            embed_dim=256,
            num_heads=8,
            feedforward_dim=1024,
            attn_dropout=0.1,
            ffn_dropout=0.1,
            num_layers=6,
            post_norm=False,
            num_feature_levels="${..num_feature_levels}",
        ),
        decoder=L(DeformableDetrTransformerDecoder)(
            embed_dim=256,
            num_heads=8,
            feedforward_dim=1024,
            attn_dropout=0.1,
            ffn_dropout=0.1,
            num_layers=6,
            return_intermediate=True,
            num_feature_levels="${..num_feature_levels}",
        ),
        num_feature_levels=4,
        as_two_stage="${..as_two_stage}",
        two_stage_num_proposals="${..num_queries}",
    ),
    embed_dim=256,
    num_classes=80,
    num_queries=300,
    aux_loss=True,
    with_box_refine=False,
    as_two_stage=False,
    criterion=L(DeformableCriterion)(
        num_classes="${..num_classes}",
        matcher=L(HungarianMatcher)(
            cost_class=2.0,
            cost_bbox=5.0,
            cost_giou=2.0,
            cost_class_type="focal_loss_cost",
            alpha=0.25,
            gamma=2.0,
        ),
        # Also weights the auxiliary (``_0`` .. ``_4``) and encoder (``_enc``) losses, which
        # SetCriterion looks up by their base name.
        weight_dict={"loss_class": 1.0, "loss_bbox": 5.0, "loss_giou": 2.0},
        loss_class_type="focal_loss",
        alpha=0.25,
        gamma=2.0,
    ),
    **_r50.pixels,
    select_box_nums_for_evaluation=300,
)
