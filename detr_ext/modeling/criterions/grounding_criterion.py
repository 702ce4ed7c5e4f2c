"""The loss of text-prompted DINO (Grounding DINO): DINO's criterion with the classification
term over text tokens.

The detector scores every query against every text token (``pred_logits [B, Q, T]``). A query
matched to a target must light up exactly the tokens of the target's phrase (its
``positive_map`` row) and no other token; every other query none. The term is the sigmoid
focal loss over all ``Q x T`` (query, token) pairs, with the normalization of DINO's class loss
(summed, divided by the box count), for the last decoder layer, the auxiliary layers, the
encoder proposals and the denoising queries alike. Padded token positions carry a large
negative logit (:data:`~detr_ext.layers.MASKED_LOGIT`) and target 0, so they add nothing.
Box losses are DINO's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from detr_ext.modeling.losses.focal_loss import sigmoid_focal_loss
from detr_ext.modeling.losses.precision import full_precision
from detr_ext.modeling.matchers.grounding_matcher import check_positive_maps

from .base_criterion import Indices
from .dn_criterion import DINOCriterion

__all__ = ["GroundingCriterion"]


class GroundingCriterion(DINOCriterion):
    """:class:`~detr_ext.modeling.DINOCriterion` with token-level classification targets.

    Takes the arguments of ``DINOCriterion`` with ``loss_class_type="focal_loss"`` (the only
    one that fits independent token sigmoids); ``num_classes`` is not used by the token loss
    (any value >= 1, e.g. the text length). The matcher should score phrases through token maps
    (:class:`~detr_ext.modeling.matchers.GroundingHungarianMatcher`).

    Targets: ``B`` dicts with ``labels [n_i]``, ``boxes [n_i, 4]`` and ``positive_map [n_i,
    T]`` (0/1 token map of each target's phrase, ``T`` = the width of ``pred_logits``).
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.loss_class_type != "focal_loss":
            raise ValueError(
                "GroundingCriterion: expected loss_class_type='focal_loss' (token logits are "
                f"independent sigmoids), got {self.loss_class_type!r}"
            )

    def loss_labels(
        self,
        outputs: Mapping[str, Tensor],
        targets: Sequence[Mapping[str, Tensor]],
        indices: Indices,
        num_boxes: float,
    ) -> dict[str, Tensor]:
        """Token focal loss ``{"loss_class": scalar}``: matched queries take their target's
        token map as target, all other (query, token) pairs are negatives."""
        logits = full_precision(outputs["pred_logits"])  # [B, Q, T]
        check_positive_maps(targets, logits.shape[-1], type(self).__name__)
        batch_index, query_index = self.matched_query_index(indices)
        token_targets = torch.zeros_like(logits)
        matched_maps = self.matched_targets(targets, indices, "positive_map")
        token_targets[batch_index, query_index] = (matched_maps > 0).to(logits.dtype)
        # sigmoid_focal_loss averages over queries; multiplying by Q restores the sum.
        loss = sigmoid_focal_loss(logits, token_targets, num_boxes, self.alpha, self.gamma)
        return {"loss_class": loss * logits.shape[1]}
