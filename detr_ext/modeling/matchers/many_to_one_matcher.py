"""Many-to-one matching: every target is matched to ``k`` distinct predictions (Align-DETR).

Align-DETR (Cai et al., 2023) supervises the encoder proposals and the intermediate decoder
layers with ``k`` predictions per target and keeps one-to-one matching for the last layer
(its "mixed matching", detrex/Align-DETR's ``MixedMatcher``). The assignment is still a
minimum-cost bipartite matching: the ``[Q, n]`` cost matrix of
:class:`~detr_ext.modeling.matchers.HungarianMatcher` is repeated ``k`` times along the targets
(``[Q, k * n]``, each target appearing as ``k`` identical columns) and solved by
``scipy.optimize.linear_sum_assignment``. So each target gets exactly ``k`` predictions, no
prediction is used twice, and the total cost of the ``k * n`` pairs is the smallest possible.

At most half of an image's queries are matched when that allows ``k``: when
``k * n > Q / 2``, ``k`` is lowered for that image to ``max(1, floor(Q / 2 / n))``, as
detrex / Align-DETR's ``MixedMatcher`` does (``min(int(Q * 0.5 / n), k)``), so that many
negatives remain (``max_positive_fraction``, default 0.5, sets the half). Every target still
gets the same number of predictions; with ``n > Q / 2`` this is the ordinary one-to-one
matching (``min(n, Q)`` pairs). Two differences from that code, both deliberate: the lowering
is per image (detrex overwrites ``k`` for the rest of the batch, so one crowded image lowers it
for every later image), and ``k`` never drops to 0 (detrex then matches nothing for the image).
Solving an oversized ``[Q, k * n]`` problem as it is would instead leave the assignment free to
give all ``Q`` queries to some targets and none to others.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from .hungarian_matcher import HungarianMatcher

__all__ = ["ManyToOneMatcher", "MixedMatcher", "effective_match_number"]


def effective_match_number(
    match_number: int, num_queries: int, num_targets: int, max_positive_fraction: float = 0.5
) -> int:
    """The number of predictions each target gets: ``match_number``, lowered to
    ``max(1, floor(num_queries * max_positive_fraction / num_targets))`` when it would match
    more than that fraction of the queries (see the module docstring)."""
    if num_targets == 0:
        return match_number
    allowed = math.floor(num_queries * max_positive_fraction / num_targets)
    return max(1, min(match_number, allowed))


def _check_match_number(match_number: object, where: str) -> int:
    if isinstance(match_number, bool) or not isinstance(match_number, int) or match_number < 1:
        raise ValueError(f"{where}: expected match_number to be an int >= 1, got {match_number!r}")
    return match_number


class ManyToOneMatcher(HungarianMatcher):
    """Match each target to ``match_number`` predictions at the smallest total cost.

    Takes the arguments of :class:`~detr_ext.modeling.matchers.HungarianMatcher` (the cost is
    the same) and ``max_positive_fraction`` (in ``(0, 1]``, default 0.5 as detrex): ``k`` is
    lowered for an image where ``k * n_i`` would exceed this fraction of the ``Q`` queries
    (1.0: only where the queries do not suffice). ``match_number=1`` gives exactly the
    one-to-one Hungarian assignment.

    Inputs of :meth:`forward`:
        outputs: ``{"pred_logits": [B, Q, K], "pred_boxes": [B, Q, 4]}`` (normalized ``cxcywh``).
        targets: ``B`` dicts with ``"labels"``: int64 ``[n_i]`` and ``"boxes"``: ``[n_i, 4]``.
        match_number: ``k``, predictions per target (lowered per image to
            :func:`effective_match_number` when ``k * n_i > max_positive_fraction * Q``).

    Returns:
        ``B`` pairs ``(query_index, target_index)`` of int64 CPU tensors of length ``k * n_i``
        (``k`` as lowered), ordered by increasing ``query_index``; every target index appears
        ``k`` times and every query index at most once.
    """

    def __init__(self, *args: Any, max_positive_fraction: float = 0.5, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        fraction = max_positive_fraction
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)):
            raise ValueError(
                f"{type(self).__name__}: expected max_positive_fraction as a number in (0, 1], "
                f"got {type(fraction).__name__} {fraction!r}"
            )
        if not 0 < fraction <= 1:
            raise ValueError(
                f"{type(self).__name__}: expected max_positive_fraction in (0, 1], got {fraction}"
            )
        self.max_positive_fraction = float(fraction)

    def assign(self, cost: Tensor, match_number: int = 1) -> tuple[Tensor, Tensor]:
        """Solve one image's many-to-one assignment.

        Args:
            cost: ``[Q, n]`` CPU cost matrix.
            match_number: predictions per target, ``k``.

        Returns:
            ``(query_index, target_index)``, int64 CPU tensors of length ``k * n`` (``k`` as
            lowered by :func:`effective_match_number`; ``min(Q, n)`` when ``n > Q``).
        """
        match_number = _check_match_number(match_number, type(self).__name__)
        num_queries, num_targets = cost.shape
        match_number = effective_match_number(
            match_number, num_queries, num_targets, self.max_positive_fraction
        )
        if match_number == 1 or num_targets == 0:
            return super().assign(cost)
        # Column c of the repeated matrix is a copy of target c % n.
        query_index, copy_index = super().assign(cost.repeat(1, match_number))
        return query_index, copy_index % num_targets

    @torch.no_grad()
    def forward(
        self,
        outputs: Mapping[str, Tensor],
        targets: Sequence[Mapping[str, Tensor]],
        match_number: int = 1,
    ) -> list[tuple[Tensor, Tensor]]:
        """Match predictions to targets image by image; see the class docstring."""
        match_number = _check_match_number(match_number, type(self).__name__)
        return [self.assign(cost, match_number) for cost in self.compute_cost(outputs, targets)]


MixedMatcher = ManyToOneMatcher
"""detrex/Align-DETR's name for the matcher (one-to-one or many-to-one by ``match_number``)."""
