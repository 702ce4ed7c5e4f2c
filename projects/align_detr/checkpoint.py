"""Checkpoint converters into this project's Align-DETR (registered on import).

- ``"align_detr.detrex"``: detrex/Align-DETR checkpoints (``aligndetr_k=2_r50_4scale_12ep``
  and ``_24ep``). Align-DETR's network is DINO's, with the same parameter names and shapes
  as ours (634 tensors, listed in ``tests/fixtures/state_dict_keys/
  detrex_align_detr_r50_4scale.txt``), so the conversion is the identity; BatchNorm counters
  (``num_batches_tracked``), if present, are dropped. The criterion's prime-sample weight
  table is computed from the config and is not part of the state_dict.

Use ``tools/convert_checkpoint.py --from align_detr.detrex --config
projects/align_detr/configs/aligndetr_k2_r50_4scale_12ep.py checkpoint.pth out.pth``.
"""

from __future__ import annotations

from detr_ext.checkpoint import DROP_NORM_COUNTERS, Converter, register_converter

__all__ = ["DETREX_CONVERTER"]

DETREX_CONVERTER = register_converter(
    Converter(
        name="align_detr.detrex",
        description="detrex/Align-DETR checkpoints (DINO's parameter names, same as ours)",
        rules=(DROP_NORM_COUNTERS,),
    )
)
