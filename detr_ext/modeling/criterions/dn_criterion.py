"""DINO's loss: the two-stage set criterion plus the denoising losses (detrex's
``DINOCriterion``), shared by DINO and the detectors trained like it (Align-DETR).

Denoising queries are not matched: positive query ``g * group_size + j`` of an image
reconstructs its target ``j`` (:func:`detr_ext.layers.denoising_indices`), everything else in
the denoising part (negatives, padding) is background. Their losses use the ordinary loss
functions, normalized by ``num_boxes * num_dn_group``, and are named ``loss_*_dn`` for the
last decoder layer and ``loss_*_dn_{i}`` for auxiliary layer ``i``. A batch without
denoising queries (no targets) gives zero-valued denoising losses, so the loss keys never
change.

``num_boxes`` is the box count all-reduced once per forward by
:meth:`~detr_ext.modeling.SetCriterion.compute_losses`, reused here: a worker whose batch
has no denoising queries runs the same collectives as one whose batch has some (detrex
reduces once, unconditionally, too).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from detr_ext.layers import denoising_indices

from .base_criterion import SetCriterion

__all__ = ["DINOCriterion"]


class DINOCriterion(SetCriterion):
    """:class:`~detr_ext.modeling.SetCriterion` (last layer, ``_{i}`` auxiliary layers,
    ``_enc`` encoder proposals against the same targets) plus denoising losses.

    Takes the arguments of :class:`~detr_ext.modeling.SetCriterion`. ``weight_dict`` may hold
    ``loss_class_dn`` etc. to weight the denoising losses (the longest-prefix rule then covers
    ``loss_class_dn_{i}``); without them they use the base weights.

    Inputs of :meth:`forward`: the outputs of a DINO-style detector, i.e. those of
    ``SetCriterion`` plus, when denoising ran, ``"dn_outputs"`` (``pred_logits [B, P, K]``,
    ``pred_boxes [B, P, 4]``, optional ``aux_outputs``) and ``"dn_meta"``
    (``{"pad_size", "num_dn_group"}``).
    """

    def compute_losses(
        self, outputs: Mapping[str, object], targets: Sequence[Mapping[str, Tensor]]
    ) -> dict[str, Tensor]:
        """Unweighted matching, encoder and denoising losses, all from one box count."""
        num_boxes = self.get_num_boxes(targets, outputs["pred_logits"].device)
        losses = self.matching_losses(outputs, targets, num_boxes)
        losses.update(self.denoising_losses(outputs, targets, num_boxes))
        return losses

    def denoising_losses(
        self,
        outputs: Mapping[str, object],
        targets: Sequence[Mapping[str, Tensor]],
        num_boxes: float,
    ) -> dict[str, Tensor]:
        """``loss_*_dn`` and ``loss_*_dn_{i}`` for every auxiliary layer of ``outputs``,
        normalized by ``num_boxes * num_dn_group`` (``num_boxes`` as from
        :meth:`~detr_ext.modeling.SetCriterion.get_num_boxes`; no collective here)."""
        num_aux = len(outputs.get("aux_outputs") or [])
        suffixes = ["_dn"] + [f"_dn_{i}" for i in range(num_aux)]
        dn_outputs = outputs.get("dn_outputs")
        dn_meta = outputs.get("dn_meta")
        if dn_outputs is None or dn_meta is None:
            zero = torch.zeros((), device=outputs["pred_logits"].device)
            return {
                key + suffix: zero
                for suffix in suffixes
                for loss in self.losses
                for key in self.LOSS_KEYS[loss]
            }

        dn_aux_outputs = list(dn_outputs.get("aux_outputs") or [])
        if len(dn_aux_outputs) < num_aux:
            raise ValueError(
                f"{type(self).__name__}: expected {num_aux} denoising aux_outputs (one per "
                f"matching aux output), got {len(dn_aux_outputs)}"
            )
        dn_num_boxes = num_boxes * dn_meta["num_dn_group"]
        indices = denoising_indices(targets, dn_meta)
        losses: dict[str, Tensor] = {}
        for layer_outputs, suffix in zip([dn_outputs, *dn_aux_outputs], suffixes, strict=False):
            for loss in self.losses:
                layer_losses = self.get_loss(loss, layer_outputs, targets, indices, dn_num_boxes)
                losses.update({key + suffix: value for key, value in layer_losses.items()})
        return losses
