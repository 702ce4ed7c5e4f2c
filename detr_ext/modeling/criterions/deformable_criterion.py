"""Deformable DETR's criterion: :class:`SetCriterion` with class-agnostic encoder targets."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from .base_criterion import SetCriterion

__all__ = ["DeformableCriterion"]


class DeformableCriterion(SetCriterion):
    """Set criterion whose two-stage encoder loss treats every object as class 0.

    The encoder proposals of two-stage Deformable DETR only need to find objects; their
    classification is trained as foreground-vs-background on the first class logit, which is
    also the score that ranks them for query selection. Arguments as for
    :class:`~detr_ext.modeling.SetCriterion`.
    """

    def encoder_targets(
        self, targets: Sequence[Mapping[str, Tensor]]
    ) -> Sequence[Mapping[str, Tensor]]:
        """The targets with every label replaced by 0 (boxes unchanged)."""
        return [{**target, "labels": torch.zeros_like(target["labels"])} for target in targets]
