"""nn building blocks shared by the DETR-family detectors (torch only, no detectron2)."""

from .alignment_head import MASKED_LOGIT, TokenAlignmentHead
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
from .deformable_detr_encoder_decoder import (
    DeformableDetrTransformerDecoder,
    DeformableDetrTransformerEncoder,
)
from .deformable_detr_transformer import DeformableDetrTransformer
from .deformable_geometry import (
    gen_encoder_output_proposals,
    get_encoder_reference_points,
    get_valid_ratio,
)
from .deformable_transformer import (
    DeformableTransformerBase,
    DeformableTransformerEncoder,
    deformable_transformer_layer,
)
from .denoising import (
    CdnQueryGenerator,
    DenoisingQueries,
    build_dn_attn_mask,
    denoising_indices,
    dn_post_process,
    keep_parameters_in_graph,
    num_denoising_groups,
    prepare_for_cdn,
)
from .detr_transformer import DetrTransformer, DetrTransformerDecoder, DetrTransformerEncoder
from .dino_encoder_decoder import DINOTransformerDecoder, DINOTransformerEncoder
from .dino_transformer import DINOTransformer
from .grounding_dino_encoder_decoder import (
    GroundingDINODecoder,
    GroundingDINOEncoder,
    grounding_decoder_layer,
)
from .grounding_dino_transformer import GroundingDINOTransformer
from .mask_head import MaskHeadSmallConv, MHAttentionMap
from .mlp import FFN, MLP
from .multi_scale_deform_attn import MultiScaleDeformableAttention
from .padding_mask import resize_padding_mask
from .position_embedding import (
    PositionEmbeddingLearned,
    PositionEmbeddingSine,
    get_sine_pos_embed,
)
from .text_attention import TextCrossAttention, TextEnhancerLayer
from .transformer import BaseTransformerLayer, TransformerLayerSequence
from .vl_fusion import BiAttentionBlock, BiMultiHeadAttention

__all__ = [
    "MASKED_LOGIT",
    "BiAttentionBlock",
    "BiMultiHeadAttention",
    "GroundingDINODecoder",
    "GroundingDINOEncoder",
    "GroundingDINOTransformer",
    "TextCrossAttention",
    "TextEnhancerLayer",
    "TokenAlignmentHead",
    "grounding_decoder_layer",
    "CdnQueryGenerator",
    "DINOTransformer",
    "DINOTransformerDecoder",
    "DINOTransformerEncoder",
    "DeformableDetrTransformer",
    "DeformableDetrTransformerDecoder",
    "DeformableDetrTransformerEncoder",
    "DeformableTransformerBase",
    "DeformableTransformerEncoder",
    "DenoisingQueries",
    "DetrTransformer",
    "DetrTransformerDecoder",
    "DetrTransformerEncoder",
    "FFN",
    "MLP",
    "MHAttentionMap",
    "MaskHeadSmallConv",
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
    "deformable_transformer_layer",
    "denoising_indices",
    "dn_post_process",
    "gen_encoder_output_proposals",
    "generalized_box_iou",
    "get_encoder_reference_points",
    "get_sine_pos_embed",
    "get_valid_ratio",
    "inverse_sigmoid",
    "keep_parameters_in_graph",
    "matched_box_iou",
    "matched_generalized_box_iou",
    "num_denoising_groups",
    "prepare_for_cdn",
    "resize_padding_mask",
]
