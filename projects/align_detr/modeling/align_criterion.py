"""Align-DETR's loss (detrex/Align-DETR's ``AlignDETRCriterion``): DINO's criterion with mixed
many-to-one matching, the IoU-aware BCE classification loss and prime-sample weighting.

Per layer ``l`` (``match_num = [encoder, decoder layer 0, ..., last decoder layer]``, detrex's
``layer_spec`` order; ``[2, 2, 2, 2, 2, 2, 1]`` in the COCO configs):

- matching: every target is matched to ``k_l = match_num[l]`` predictions
  (:class:`~detr_ext.modeling.ManyToOneMatcher`); the last decoder layer stays one-to-one;
- ``loss_class``: :func:`~detr_ext.modeling.losses.ia_bce_loss`; the ``r``-th best match of a
  target (by the alignment quality ``t``) has its target ``t`` scaled by
  ``w_r = exp(-r / tau)`` (a row of ``weight_table``);
- ``loss_bbox`` / ``loss_giou``: L1 and ``1 - GIoU`` of each match times the same ``w_r``,
  summed and divided by ``num_boxes`` (the number of ground-truth boxes, not ``k * n``).

The denoising queries have a fixed assignment; their losses (``_dn``, ``_dn_{i}``) use IA-BCE
and the box losses with every weight 1, normalized by ``num_boxes * num_dn_group`` as in DINO.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from detr_ext.layers.box_ops import box_cxcywh_to_xyxy, matched_box_iou
from detr_ext.modeling.criterions import DINOCriterion, Indices
from detr_ext.modeling.losses import (
    alignment_quality,
    ia_bce_loss,
    local_rank,
    prime_sample_weights,
)
from detr_ext.modeling.matchers import ManyToOneMatcher

__all__ = ["AlignDETRCriterion"]


class AlignDETRCriterion(DINOCriterion):
    """:class:`~detr_ext.modeling.DINOCriterion` with Align-DETR's matching and losses.

    Args:
        num_classes: object classes ``K`` (sigmoid logits ``[B, Q, K]``).
        matcher: a :class:`~detr_ext.modeling.ManyToOneMatcher` (detrex: ``MixedMatcher``).
        weight_dict: loss weights, as for :class:`~detr_ext.modeling.SetCriterion`.
        match_num: matches per target for ``[encoder proposals, decoder layer 0, ..., last
            decoder layer]``, so ``num_decoder_layers + 1`` entries.
        tau: temperature of the prime-sample weights ``exp(-rank / tau)``.
        losses: which losses to compute (``"class"``, ``"boxes"``).
        alpha: exponent of the score in the IA-BCE quality ``t = s ** alpha * IoU ** (1 - alpha)``.
        gamma: exponent of the negatives' weight ``p ** gamma`` in IA-BCE.

    Inputs and outputs of :meth:`forward` are those of ``DINOCriterion``.
    """

    def __init__(
        self,
        num_classes: int,
        matcher: ManyToOneMatcher,
        weight_dict: Mapping[str, float],
        match_num: Sequence[int] = (2, 2, 2, 2, 2, 2, 1),
        tau: float = 1.5,
        losses: Iterable[str] = ("class", "boxes"),
        alpha: float = 0.25,
        gamma: float = 2.0,
    ) -> None:
        super().__init__(
            num_classes,
            matcher,
            weight_dict,
            losses=losses,
            loss_class_type="focal_loss",  # sigmoid logits [B, Q, K]; the loss is IA-BCE
            alpha=alpha,
            gamma=gamma,
        )
        name = type(self).__name__
        if not isinstance(matcher, ManyToOneMatcher):
            raise TypeError(
                f"{name}: expected a ManyToOneMatcher (it takes the per-layer match number), "
                f"got {type(matcher).__name__}"
            )
        match_num = list(match_num)
        if len(match_num) < 2 or any(
            isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in match_num
        ):
            raise ValueError(
                f"{name}: expected match_num as ints >= 1 for [encoder, decoder layers...] "
                f"(at least 2 entries), got {match_num}"
            )
        self.match_num = tuple(match_num)
        self.tau = float(tau)
        # Row l: prime-sample weight of the r-th best match of a target in layer l (0 for
        # r >= match_num[l]); detrex's weight_table. Not saved: it follows from the config.
        weight_table = torch.stack(
            [prime_sample_weights(k, self.tau, max(self.match_num)) for k in self.match_num]
        )
        self.register_buffer("weight_table", weight_table, persistent=False)
        self._num_aux_layers: int | None = None

    # ------------------------------------------------------------------ layers

    def compute_losses(
        self, outputs: Mapping[str, object], targets: Sequence[Mapping[str, Tensor]]
    ) -> dict[str, Tensor]:
        """Unweighted losses of every layer; checks ``match_num`` against the layer count."""
        num_aux = len(outputs.get("aux_outputs") or [])
        if num_aux and num_aux + 2 != len(self.match_num):
            raise ValueError(
                f"{type(self).__name__}: match_num has {len(self.match_num)} entries, expected "
                f"{num_aux + 2} (encoder + {num_aux + 1} decoder layers), got {self.match_num}"
            )
        self._num_aux_layers = num_aux
        return super().compute_losses(outputs, targets)

    def layer_spec(self, layer_index: int | None) -> int:
        """Row of ``match_num`` / ``weight_table`` for a layer index of :meth:`match`:
        the encoder (None) is 0, ``aux_outputs[i]`` is ``i + 1`` and the last layer is last."""
        if layer_index is None:
            return 0
        if layer_index == self._num_aux_layers:
            return len(self.match_num) - 1
        return layer_index + 1

    def match(
        self,
        outputs: Mapping[str, Tensor],
        targets: Sequence[Mapping[str, Tensor]],
        layer_index: int | None,
    ) -> Indices:
        """Many-to-one assignment with ``match_num[layer_spec(layer_index)]`` per target."""
        match_number = self.match_num[self.layer_spec(layer_index)]
        return self.matcher(outputs, targets, match_number=match_number)

    def layer_loss_kwargs(self, layer_index: int | None) -> dict[str, Any]:
        """The layer's prime-sample weights, ``rank_weights = weight_table[layer_spec]``."""
        return {"rank_weights": self.weight_table[self.layer_spec(layer_index)]}

    # ------------------------------------------------------------------ losses

    @staticmethod
    def matched_groups(targets: Sequence[Mapping[str, Tensor]], indices: Indices) -> Tensor:
        """``[num_matched]`` target ids unique over the batch (image offset + target index)."""
        offsets = [0]
        for target in targets[:-1]:
            offsets.append(offsets[-1] + len(target["labels"]))
        return torch.cat(
            [target_index + offset for (_, target_index), offset in zip(indices, offsets)]
        )

    def matched_ious(
        self,
        outputs: Mapping[str, Tensor],
        targets: Sequence[Mapping[str, Tensor]],
        indices: Indices,
    ) -> Tensor:
        """``[num_matched]`` IoU of every matched predicted box with its target box."""
        batch_index, query_index = self.matched_query_index(indices)
        pred_boxes = outputs["pred_boxes"][batch_index, query_index]
        target_boxes = self.matched_targets(targets, indices, "boxes")
        return matched_box_iou(box_cxcywh_to_xyxy(pred_boxes), box_cxcywh_to_xyxy(target_boxes))

    def match_weights(
        self,
        outputs: Mapping[str, Tensor],
        targets: Sequence[Mapping[str, Tensor]],
        indices: Indices,
        rank_weights: Tensor | None,
    ) -> Tensor:
        """``[num_matched]`` prime-sample weight ``rank_weights[rank]`` of every match (rank by
        decreasing alignment quality among the matches of its target); ones if None."""
        batch_index, query_index = self.matched_query_index(indices)
        labels = self.matched_targets(targets, indices, "labels")
        scores = outputs["pred_logits"][batch_index, query_index, labels.long()].sigmoid()
        if rank_weights is None:
            return torch.ones_like(scores).detach()
        quality = alignment_quality(
            scores, self.matched_ious(outputs, targets, indices), self.alpha
        )
        rank = local_rank(quality, self.matched_groups(targets, indices).to(quality.device))
        return rank_weights.to(quality)[rank]

    def loss_labels(
        self,
        outputs: Mapping[str, Tensor],
        targets: Sequence[Mapping[str, Tensor]],
        indices: Indices,
        num_boxes: float,
        rank_weights: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """IA-BCE ``{"loss_class": scalar}``; ``rank_weights`` as in :func:`ia_bce_loss`."""
        logits = outputs["pred_logits"]
        if logits.shape[-1] != self.num_classes:
            raise ValueError(
                f"{type(self).__name__}: with num_classes={self.num_classes}, expected "
                f"pred_logits [B, Q, {self.num_classes}], got {tuple(logits.shape)}"
            )
        batch_index, query_index = self.matched_query_index(indices)
        loss_class, _ = ia_bce_loss(
            logits,
            batch_index,
            query_index,
            self.matched_targets(targets, indices, "labels").to(torch.int64),
            self.matched_ious(outputs, targets, indices),
            num_boxes,
            alpha=self.alpha,
            gamma=self.gamma,
            groups=None if rank_weights is None else self.matched_groups(targets, indices),
            rank_weights=rank_weights,
        )
        return {"loss_class": loss_class}

    def loss_boxes(
        self,
        outputs: Mapping[str, Tensor],
        targets: Sequence[Mapping[str, Tensor]],
        indices: Indices,
        num_boxes: float,
        rank_weights: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """``{"loss_bbox", "loss_giou"}`` of the matched pairs, each times its weight."""
        weights = self.match_weights(outputs, targets, indices, rank_weights)  # [num_matched]
        return super().loss_boxes(outputs, targets, indices, num_boxes, weights=weights)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, match_num={list(self.match_num)}, tau={self.tau}"
