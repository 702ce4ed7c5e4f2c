"""Hungarian matching for detectors that score text tokens instead of classes (GLIP, Grounding
DINO): the class term of a (query, target) pair is the focal cost of the query's token logits,
averaged over the tokens of the target's phrase.

A target then carries, besides ``labels`` and ``boxes``, its phrase's ``positive_map``: a
``[n, T]`` 0/1 row per target marking the phrase's tokens among the ``T`` text tokens the
logits score (see :mod:`detr_ext.modeling.language`). Box costs are those of
:class:`~detr_ext.modeling.HungarianMatcher`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from ..language.positive_map import phrase_token_weights
from .hungarian_matcher import HungarianMatcher

__all__ = ["GroundingHungarianMatcher", "check_positive_maps"]


def check_positive_maps(
    targets: Sequence[Mapping[str, Tensor]], num_tokens: int, where: str
) -> None:
    """Raise a ValueError unless every target dict has a ``positive_map [n_i, num_tokens]``."""
    for image_index, target in enumerate(targets):
        positive_map = target.get("positive_map")
        if positive_map is None:
            raise ValueError(
                f"{where}: targets[{image_index}] must contain 'positive_map' ([n, T] token map "
                f"of each target's phrase), got keys {sorted(target)}"
            )
        expected = (len(target["labels"]), num_tokens)
        if tuple(positive_map.shape) != expected:
            raise ValueError(
                f"{where}: targets[{image_index}]['positive_map'] expected shape {expected} "
                f"(one row per target, one column per token of pred_logits), got "
                f"{tuple(positive_map.shape)}"
            )


class GroundingHungarianMatcher(HungarianMatcher):
    """One-to-one matching on token logits.

    Takes the arguments of :class:`~detr_ext.modeling.HungarianMatcher`; the class cost must be
    the focal cost (``cost_class_type="focal_loss_cost"``): tokens are independent sigmoids.

    Inputs of :meth:`forward`:
        outputs: ``{"pred_logits": [B, Q, T], "pred_boxes": [B, Q, 4]}``.
        targets: ``B`` dicts with ``labels [n_i]``, ``boxes [n_i, 4]`` and
            ``positive_map [n_i, T]``.

    The class cost of query ``q`` and target ``j`` is
    ``sum_t focal_cost[q, t] * positive_map[j, t] / sum_t positive_map[j, t]``, the phrase score
    of Grounding DINO's matcher; a target whose map is empty has class cost 0.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.cost_class_type != "focal_loss_cost":
            raise ValueError(
                "GroundingHungarianMatcher: expected cost_class_type='focal_loss_cost' (token "
                f"logits are independent sigmoids), got {self.cost_class_type!r}"
            )

    def target_class_cost(self, logits: Tensor, targets: Sequence[Mapping[str, Tensor]]) -> Tensor:
        """``[P, sum(n_i)]`` phrase costs from ``logits [P, T]`` and the targets' token maps."""
        check_positive_maps(targets, logits.shape[-1], type(self).__name__)
        positive_maps = torch.cat([target["positive_map"] for target in targets]).to(logits)
        weights = phrase_token_weights(positive_maps)
        return self.focal_cost(logits) @ weights.T
