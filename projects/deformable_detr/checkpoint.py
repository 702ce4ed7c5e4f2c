"""Checkpoint converter into this project's Deformable DETR (registered on import).

``"deformable_detr.detrex"``: detrex's Deformable DETR checkpoints, all three variants (plain,
``with_box_refine``, ``as_two_stage``). Our modules are named as detrex's and share heads the
same way, so the state_dict keys and shapes are identical and the conversion is the identity.
Heads shared across decoder layers appear once per layer in the state_dict (e.g.
``class_embed.0`` .. ``class_embed.5`` of the plain model, or ``class_embed.N`` and
``transformer.decoder.class_embed.N`` of the two-stage model); loading writes the same tensor
into the shared module once per name.

Use ``tools/convert_checkpoint.py --from deformable_detr.detrex --config
projects/deformable_detr/configs/deformable_detr_r50_two_stage_50ep.py in.pth out.pth`` with
the config of the checkpoint's variant.
"""

from __future__ import annotations

from detr_ext.checkpoint import DROP_NORM_COUNTERS, Converter, register_converter

__all__ = ["DETREX_CONVERTER"]

DETREX_CONVERTER = register_converter(
    Converter(
        name="deformable_detr.detrex",
        description=(
            "detrex Deformable DETR checkpoints: plain, box refinement and two-stage "
            "(same parameter names as ours)"
        ),
        rules=(DROP_NORM_COUNTERS,),
    )
)
