"""Checkpoint converter from IDEA-Research's Grounding DINO into this project's GroundingDINO
(registered on import as ``"grounding_dino.idea"``).

What maps, and how (IDEA name -> ours):

- text encoder: ``bert.*`` (a transformers ``BertModel``) -> ``bert.model.*`` (the
  transformers model inside :class:`~detr_ext.modeling.language.TextEncoder`); IDEA's
  ``bert-base-uncased`` needs ``model.text_encoder.model_name_or_path`` pointing at a
  bert-base-uncased folder (the default all-MiniLM-L6-v2 has other shapes);
  ``feat_map`` -> ``feat_map``;
- neck: ``input_proj.{i}.0`` / ``.1`` (conv / GroupNorm) -> ``neck.convs.{i}.conv`` /
  ``.norm`` for the backbone levels and ``neck.extra_convs.0`` for the extra stride-64 level
  (``EXTRA_INPUT_PROJ`` = the number of backbone levels, 3 in IDEA's 4-scale models);
- feature enhancer: ``transformer.encoder.fusion_layers.*`` and ``text_layers.*`` keep their
  names (our modules use IDEA's); each deformable image layer ``self_attn``, ``norm1``,
  ``linear1``, ``linear2``, ``norm2`` -> ``attentions.0``, ``norms.0``, ``ffns.0.layers.0.0``,
  ``ffns.0.layers.1``, ``norms.1`` (detrex names, as in our DINO);
- decoder layers: ``self_attn`` -> ``attentions.0.attn``, ``norm2`` -> ``norms.0``,
  ``ca_text`` -> ``attentions.1.attn``, ``catext_norm`` -> ``norms.1``, ``cross_attn`` ->
  ``attentions.2``, ``norm1`` -> ``norms.2``, ``linear1`` / ``linear2`` -> ``ffns.0``,
  ``norm3`` -> ``norms.3``; ``ref_point_head``, ``norm`` keep their names;
- ``transformer.level_embed`` -> ``transformer.level_embeds``; ``tgt_embed``,
  ``enc_output``, ``enc_output_norm`` keep their names; IDEA's box heads
  (``bbox_embed.{i}``, ``transformer.decoder.bbox_embed.{i}``) keep theirs and its
  ``transformer.enc_out_bbox_embed`` is our last box head (``bbox_embed.6`` for IDEA's 6
  decoder layers; it refines the encoder proposals). Keys of tied modules (our heads are also
  ``transformer.decoder.*``) are converted together;
- alignment heads: IDEA's ``ContrastiveEmbed`` is the parameter-free ``x @ text^T``; our
  ``class_embed.{i}`` get ``logit_scale = log(sqrt(C))`` and ``bias = 0``, which computes the
  same logits (see :class:`~detr_ext.layers.TokenAlignmentHead`).

Not mapped: IDEA's image backbones (Swin-T / Swin-B; our configs use ResNets or timm, so
``backbone.0.*`` is reported as unused unless a config builds the same backbone), its
``label_enc`` embedding (ours embeds phrases, not a fixed label book; kept from the model),
``bert.embeddings.position_ids`` (a buffer of older transformers versions) and BERT's pooler
(``bert.pooler.*``; the text encoder uses token features only and has none): dropped.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from detr_ext.checkpoint import DROP_NORM_COUNTERS, Converter, register_converter

__all__ = ["IDEA_CONVERTER", "idea_alignment_scale"]

EXTRA_INPUT_PROJ = 3
"""Index of IDEA's ``input_proj`` that is the extra (stride 64) level in 4-scale models."""
IDEA_DECODER_LAYERS = 6
"""Decoder layers of IDEA's released models; its encoder-proposal box head is our head
``bbox_embed.6`` (one per decoder layer, then the encoder's)."""

_ENCODER = r"^transformer\.encoder\.layers\.(\d+)\."
_DECODER = r"^transformer\.decoder\.layers\.(\d+)\."


def idea_alignment_scale(target_value: Tensor) -> Tensor:
    """``logit_scale`` that makes ``TokenAlignmentHead`` compute IDEA's ``x @ text^T``.

    The head divides by ``sqrt(C)``; with ``C`` not stored in the scalar, it is taken from the
    model width IDEA uses (256).
    """
    return torch.full_like(target_value, math.log(math.sqrt(256)))


def _encoder(name: str, ours: str) -> tuple[str, str]:
    return _ENCODER + name + r"\.", r"transformer.encoder.layers.\1." + ours + "."


def _decoder(name: str, ours: str) -> tuple[str, str]:
    return _DECODER + name + r"\.", r"transformer.decoder.layers.\1." + ours + "."


IDEA_CONVERTER = register_converter(
    Converter(
        name="grounding_dino.idea",
        description="IDEA-Research Grounding DINO checkpoints (groundingdino_*.pth)",
        rules=(
            DROP_NORM_COUNTERS,
            (r"^bert\.embeddings\.position_ids$", None),
            (r"^bert\.pooler\.", None),
            (r"^label_enc\.", None),
            (r"^bert\.", "bert.model."),
            (rf"^input_proj\.{EXTRA_INPUT_PROJ}\.0\.", "neck.extra_convs.0.conv."),
            (rf"^input_proj\.{EXTRA_INPUT_PROJ}\.1\.", "neck.extra_convs.0.norm."),
            (r"^input_proj\.(\d+)\.0\.", r"neck.convs.\1.conv."),
            (r"^input_proj\.(\d+)\.1\.", r"neck.convs.\1.norm."),
            (r"^transformer\.level_embed$", "transformer.level_embeds"),
            (r"^transformer\.enc_out_bbox_embed\.", f"bbox_embed.{IDEA_DECODER_LAYERS}."),
            _encoder("self_attn", "attentions.0"),
            _encoder("norm1", "norms.0"),
            _encoder("linear1", "ffns.0.layers.0.0"),
            _encoder("linear2", "ffns.0.layers.1"),
            _encoder("norm2", "norms.1"),
            _decoder("self_attn", "attentions.0.attn"),
            _decoder("norm2", "norms.0"),
            _decoder("ca_text", "attentions.1.attn"),
            _decoder("catext_norm", "norms.1"),
            _decoder("cross_attn", "attentions.2"),
            _decoder("norm1", "norms.2"),
            _decoder("linear1", "ffns.0.layers.0.0"),
            _decoder("linear2", "ffns.0.layers.1"),
            _decoder("norm3", "norms.3"),
        ),
        defaults=(
            (r"(transformer\.decoder\.)?class_embed\.\d+\.logit_scale", idea_alignment_scale),
            (r"(transformer\.decoder\.)?class_embed\.\d+\.bias", torch.zeros_like),
        ),
        fill_from_target=(r"label_enc\.(weight|bias)",),
    )
)
