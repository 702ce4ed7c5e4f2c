"""Checkpoint converters into this project's DETR (registered on import).

- ``"detr.detrex"``: detrex's DETR checkpoints. Our parameter names are detrex's, so the
  conversion is the identity (``criterion.empty_weight`` is taken from the model when absent).
- ``"detr.facebookresearch"``: the original DETR release (``detr-r50-e632da11.pth``,
  ``detr-r50-dc5-f0fb7ef5.pth``, ...). Its torchvision ResNet and ``nn.Transformer``-style
  names are renamed to detectron2 ResNet / detrex names, and its 92 class rows (COCO category
  ids 0-90 plus no-object at 91) are reordered into our 80 contiguous classes plus
  no-object when the target model has ``num_classes=80``.
- ``"detr.facebookresearch_panoptic"``: the original DETR panoptic release
  (``detr-r50-panoptic-00ce5173.pth``, ...: a ``DETRsegm`` whose detector sits under
  ``detr.``) into our ``DETRSegm``. The ``detr.`` prefix goes, the detector's names are
  renamed as above, ``bbox_attention.*`` and ``mask_head.*`` keep theirs, and its 251 class
  rows (COCO panoptic category ids 0-249, no-object at 250) are reordered into the 133
  unified contiguous classes of detectron2's COCO panoptic metadata (things then stuff, the
  order of ``COCO_CATEGORIES``) plus no-object when the target has ``num_classes=133``.

Use ``tools/convert_checkpoint.py --from detr.facebookresearch --config ... in.pth out.pth``.
"""

from __future__ import annotations

import re

from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES
from torch import Tensor

from detr_ext.checkpoint import DROP_NORM_COUNTERS, Converter, register_converter

__all__ = [
    "DETREX_CONVERTER",
    "FACEBOOKRESEARCH_CONVERTER",
    "FACEBOOKRESEARCH_PANOPTIC_CONVERTER",
    "coco91_class_rows",
    "coco_panoptic_class_rows",
]

# facebookresearch/detr predicts num_classes=91 (COCO category ids used directly) + no-object.
_FACEBOOK_NUM_LOGITS = 92
_FACEBOOK_NO_OBJECT = 91
# Its panoptic models predict num_classes=250 (panoptic category ids, at most 200) + no-object.
_FACEBOOK_PANOPTIC_NUM_LOGITS = 251
_FACEBOOK_PANOPTIC_NO_OBJECT = 250


def coco91_class_rows() -> list[int]:
    """Rows of a 92-way DETR classifier for our classes: the COCO category id of each
    contiguous class 0..79 (detectron2's order), then the no-object row 91."""
    return [c["id"] for c in COCO_CATEGORIES if c["isthing"]] + [_FACEBOOK_NO_OBJECT]


def coco_panoptic_class_rows() -> list[int]:
    """Rows of a 251-way DETR panoptic classifier for our classes: the COCO panoptic category
    id of each unified contiguous class 0..132 (things and stuff in detectron2's
    ``COCO_CATEGORIES`` order, as ``register_coco_panoptic`` numbers them), then the no-object
    row 250."""
    return [c["id"] for c in COCO_CATEGORIES] + [_FACEBOOK_PANOPTIC_NO_OBJECT]


def _class_row_selector(num_logits: int, rows: list[int]):
    """A transform reordering ``class_embed`` rows from dataset ids (``num_logits``) to
    contiguous ids (``len(rows)``) when the target has that many; otherwise the value is left
    as is and the report lists the shape mismatch."""

    def select(value: Tensor, target: Tensor) -> Tensor:
        if value.shape[0] == num_logits and target.shape[0] == len(rows):
            return value[rows]
        return value

    return select


_select_coco_classes = _class_row_selector(_FACEBOOK_NUM_LOGITS, coco91_class_rows())
_select_coco_panoptic_classes = _class_row_selector(
    _FACEBOOK_PANOPTIC_NUM_LOGITS, coco_panoptic_class_rows()
)


def _plus_one(match: re.Match) -> str:
    return f"backbone.res{int(match.group(1)) + 1}."


def _norm_index(match: re.Match) -> str:
    return f"{match.group(1)}.norms.{int(match.group(2)) - 1}."


_TRANSFORMER_LAYER = r"^(transformer\.(?:encoder|decoder)\.layers\.\d+)"

FACEBOOKRESEARCH_RULES = (
    # torchvision ResNet inside DETR's Joiner -> detectron2 ResNet.
    DROP_NORM_COUNTERS,
    (r"^backbone\.0\.body\.", "backbone."),
    (r"^backbone\.conv1\.", "backbone.stem.conv1."),
    (r"^backbone\.bn1\.", "backbone.stem.conv1.norm."),
    (r"^backbone\.layer(\d)\.", _plus_one),
    (r"^(backbone\.res\d\.\d+)\.bn(\d)\.", r"\1.conv\2.norm."),
    (r"^(backbone\.res\d\.\d+)\.downsample\.0\.", r"\1.shortcut."),
    (r"^(backbone\.res\d\.\d+)\.downsample\.1\.", r"\1.shortcut.norm."),
    # nn.Transformer-style layers -> BaseTransformerLayer (attentions / ffns / norms).
    (_TRANSFORMER_LAYER + r"\.self_attn\.", r"\1.attentions.0.attn."),
    (_TRANSFORMER_LAYER + r"\.multihead_attn\.", r"\1.attentions.1.attn."),
    (_TRANSFORMER_LAYER + r"\.linear1\.", r"\1.ffns.0.layers.0.0."),
    (_TRANSFORMER_LAYER + r"\.linear2\.", r"\1.ffns.0.layers.1."),
    (_TRANSFORMER_LAYER + r"\.norm(\d)\.", _norm_index),
    (r"^transformer\.decoder\.norm\.", "transformer.decoder.post_norm_layer."),
    # input_proj, query_embed, class_embed and bbox_embed.layers.* keep their names.
)

FACEBOOKRESEARCH_CONVERTER = register_converter(
    Converter(
        name="detr.facebookresearch",
        description="facebookresearch/detr DETR checkpoints (torchvision ResNet backbone)",
        rules=FACEBOOKRESEARCH_RULES,
        transforms=((r"class_embed\.(?:weight|bias)", _select_coco_classes),),
        fill_from_target=(r"criterion\.empty_weight",),
    )
)

FACEBOOKRESEARCH_PANOPTIC_CONVERTER = register_converter(
    Converter(
        name="detr.facebookresearch_panoptic",
        description=(
            "facebookresearch/detr panoptic DETRsegm checkpoints (detector under 'detr.', "
            "bbox_attention, mask_head) into DETRSegm"
        ),
        rules=((r"^detr\.", ""), *FACEBOOKRESEARCH_RULES),
        transforms=((r"class_embed\.(?:weight|bias)", _select_coco_panoptic_classes),),
        fill_from_target=(r"criterion\.empty_weight",),
    )
)

DETREX_CONVERTER = register_converter(
    Converter(
        name="detr.detrex",
        description="detrex DETR checkpoints (same parameter names as ours)",
        rules=(DROP_NORM_COUNTERS,),
        fill_from_target=(r"criterion\.empty_weight",),
    )
)
