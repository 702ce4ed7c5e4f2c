"""nn building blocks shared by the DETR-family detectors (torch only, no detectron2)."""

from .attention import MultiheadAttention
from .box_ops import (
    box_cxcywh_to_xyxy,
    box_iou,
    box_xyxy_to_cxcywh,
    generalized_box_iou,
    inverse_sigmoid,
    matched_box_iou,
    matched_generalized_box_iou,
)
from .denoising import (
    CdnQueryGenerator,
    DenoisingQueries,
    build_dn_attn_mask,
    denoising_indices,
    dn_post_process,
    num_denoising_groups,
    prepare_for_cdn,
)
from .mlp import FFN, MLP
from .multi_scale_deform_attn import MultiScaleDeformableAttention
from .position_embedding import (
    PositionEmbeddingLearned,
    PositionEmbeddingSine,
    get_sine_pos_embed,
)
from .transformer import BaseTransformerLayer, TransformerLayerSequence

__all__ = [
    "CdnQueryGenerator",
    "DenoisingQueries",
    "FFN",
    "MLP",
    "BaseTransformerLayer",
    "MultiScaleDeformableAttention",
    "MultiheadAttention",
    "PositionEmbeddingLearned",
    "PositionEmbeddingSine",
    "TransformerLayerSequence",
    "box_cxcywh_to_xyxy",
    "box_iou",
    "box_xyxy_to_cxcywh",
    "build_dn_attn_mask",
    "denoising_indices",
    "dn_post_process",
    "generalized_box_iou",
    "get_sine_pos_embed",
    "inverse_sigmoid",
    "matched_box_iou",
    "matched_generalized_box_iou",
    "num_denoising_groups",
    "prepare_for_cdn",
]
