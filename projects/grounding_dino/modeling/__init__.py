"""Grounding DINO modeling: the registered ``GroundingDINO`` meta-architecture.

The reusable parts live in ``detr_ext``: the text encoder, prompts and token maps in
:mod:`detr_ext.modeling.language`; the fusion layers, alignment head and transformer in
:mod:`detr_ext.layers` (``BiAttentionBlock``, ``TokenAlignmentHead``,
``GroundingDINOTransformer``, ...); the token-level matcher and criterion in
:mod:`detr_ext.modeling`. They are re-exported here under the names configs use.
"""

from detr_ext.layers import (
    GroundingDINODecoder,
    GroundingDINOEncoder,
    GroundingDINOTransformer,
)
from detr_ext.modeling import GroundingCriterion, GroundingHungarianMatcher
from detr_ext.modeling.language import TextEncoder

from .grounding_dino import GroundingDINO

__all__ = [
    "GroundingCriterion",
    "GroundingDINO",
    "GroundingDINODecoder",
    "GroundingDINOEncoder",
    "GroundingDINOTransformer",
    "GroundingHungarianMatcher",
    "TextEncoder",
]
