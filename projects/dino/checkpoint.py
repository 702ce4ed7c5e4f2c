"""Checkpoint converters into this project's DINO (registered on import).

- ``"dino.detrex"``: detrex's DINO checkpoints (``dino_r50_4scale_12ep.pth`` and the other
  ResNet / 4- and 5-scale releases). Our parameter names and shapes are detrex's, so the
  conversion is the identity. The heads appear twice in both state_dicts (``class_embed.*``
  and ``transformer.decoder.class_embed.*`` name the same modules, likewise ``bbox_embed``);
  detrex saves equal values under both names.

Use ``tools/convert_checkpoint.py --from dino.detrex --config
projects/dino/configs/dino_r50_4scale_12ep.py dino_r50_4scale_12ep.pth out.pth``.
"""

from __future__ import annotations

from detr_ext.checkpoint import DROP_NORM_COUNTERS, Converter, register_converter

__all__ = ["DETREX_CONVERTER"]

DETREX_CONVERTER = register_converter(
    Converter(
        name="dino.detrex",
        description="detrex DINO checkpoints (same parameter names as ours)",
        rules=(DROP_NORM_COUNTERS,),
    )
)
