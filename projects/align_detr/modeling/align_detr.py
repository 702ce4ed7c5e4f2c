"""Align-DETR (Cai et al., 2023, "Align-DETR: Improving DETR with Simple IoU-aware BCE
loss") as a detectron2 meta-architecture.

The network is DINO's (:class:`~detr_ext.modeling.DINODetectorBase`: backbone, neck, DINO
transformer with contrastive denoising, mixed query selection and look-forward-twice
refinement, shared heads), unchanged: detrex's Align-DETR checkpoints have DINO's parameter
names. What Align-DETR changes is training, all in
:class:`~projects.align_detr.modeling.AlignDETRCriterion`: many-to-one matching for the
encoder proposals and intermediate decoder layers, the IoU-aware BCE classification loss and
prime-sample weights. Inference is DINO's (top 300 (query, class) pairs by sigmoid score).
"""

from __future__ import annotations

from typing import Any

from detectron2.modeling import META_ARCH_REGISTRY
from torch import nn

from detr_ext.modeling import DINODetectorBase

__all__ = ["AlignDETR"]


@META_ARCH_REGISTRY.register()
class AlignDETR(DINODetectorBase):
    """:class:`~detr_ext.modeling.DINODetectorBase` (DINO's network) trained with Align-DETR's
    criterion.

    Takes the arguments of ``DINODetectorBase``; ``criterion`` is usually an
    :class:`~projects.align_detr.modeling.AlignDETRCriterion`, whose ``match_num`` must have
    one entry for the encoder proposals plus one per decoder layer. Inputs and outputs are
    DINO's (detectron2's model contract).
    """

    def __init__(self, *, criterion: nn.Module, **kwargs: Any) -> None:
        super().__init__(criterion=criterion, **kwargs)
        match_num = getattr(criterion, "match_num", None)
        num_layers = self.transformer.decoder.num_layers
        if match_num is not None and len(match_num) != num_layers + 1:
            raise ValueError(
                f"{type(self).__name__}: criterion.match_num needs {num_layers + 1} entries "
                f"(encoder proposals + {num_layers} decoder layers), got {list(match_num)}"
            )
