"""IoU-aware binary cross-entropy (IA-BCE) of Align-DETR (Cai et al., 2023, "Align-DETR:
Improving DETR with Simple IoU-aware BCE loss"), as in detrex/Align-DETR's ``IA_BCE_loss``.

For a matched prediction with sigmoid score ``s`` of its target's class and box IoU ``u`` with
its target, the classification target is the alignment quality

    t = clamp(s ** alpha * u ** (1 - alpha), min=0.01)          (no gradient)

and, when a target has several matches (many-to-one layers), the ``r``-th best of them
(``r = 0, 1, ...`` by decreasing ``t``) has its target scaled by the prime-sample weight
``w_r`` (``exp(-r / tau)`` for the first ``k`` ranks, see :func:`prime_sample_weights`):
``t' = w_r * t``. With ``p = sigmoid(logit)`` for every (query, class) pair, the loss is

    sum over positives (matched query, target class):  -t' * log(p) - (1 - t') * log(1 - p)
    + sum over all other pairs:                         -p ** gamma * log(1 - p)

divided by ``num_boxes``: a BCE towards ``t'`` for positives and a focal-style down-weighted
BCE towards 0 for negatives (no ``alpha`` balance on the negatives). The same ``w_r`` weights
the box losses of the match (:class:`projects.align_detr.modeling.AlignDETRCriterion`).
``log(p)`` and ``log(1 - p)`` are computed as ``logsigmoid(+-logit)``: equal to detrex's
``prob.log()`` / ``(1 - prob).log()`` where those are finite, and finite where they overflow.
float16 / bfloat16 logits are computed in float32 (autocast off), like every loss here.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .precision import autocast_disabled, full_precision

__all__ = ["alignment_quality", "ia_bce_loss", "local_rank", "prime_sample_weights"]

MIN_QUALITY = 0.01
"""Lower clamp of the alignment quality ``t`` (detrex: ``torch.clamp(t, 0.01)``)."""


def alignment_quality(scores: Tensor, ious: Tensor, alpha: float = 0.25) -> Tensor:
    """``clamp(scores ** alpha * ious ** (1 - alpha), min=0.01)``, detached.

    Args:
        scores: ``[M]`` sigmoid scores of the matched predictions for their target classes.
        ious: ``[M]`` IoU of each matched predicted box with its target box.
        alpha: exponent of the score (``1 - alpha`` is that of the IoU).

    Returns:
        ``[M]`` classification targets ``t`` (no gradient).
    """
    if scores.shape != ious.shape or scores.dim() != 1:
        raise ValueError(
            "alignment_quality: expected scores and ious of the same shape [M], got "
            f"{tuple(scores.shape)} and {tuple(ious.shape)}"
        )
    quality = scores.detach() ** alpha * ious.detach() ** (1 - alpha)
    return quality.clamp(min=MIN_QUALITY)


def local_rank(quality: Tensor, groups: Tensor) -> Tensor:
    """Rank of every match among the matches of the same target, by decreasing quality.

    Args:
        quality: ``[M]`` match quality (e.g. :func:`alignment_quality`).
        groups: ``[M]`` integer ids; matches with equal ids share a target (e.g. a target
            index made unique over the batch).

    Returns:
        ``[M]`` int64: 0 for the best match of its target, 1 for the second best, ... Equal
        qualities are ranked in the order the matches are listed.
    """
    if quality.shape != groups.shape or quality.dim() != 1:
        raise ValueError(
            "local_rank: expected quality and groups of the same shape [M], got "
            f"{tuple(quality.shape)} and {tuple(groups.shape)}"
        )
    position = torch.arange(quality.shape[0], device=quality.device)
    same_group = groups[:, None] == groups[None, :]  # [M, M]
    ranked_before = (quality[None, :] > quality[:, None]) | (
        (quality[None, :] == quality[:, None]) & (position[None, :] < position[:, None])
    )
    return (same_group & ranked_before).sum(dim=1)


def prime_sample_weights(
    match_number: int, tau: float, length: int | None = None, device: torch.device | None = None
) -> Tensor:
    """Weight of the ``r``-th best match of a target: ``exp(-r / tau)`` for ``r < match_number``.

    Args:
        match_number: matches per target ``k`` in this layer.
        tau: temperature (1.5 in Align-DETR); larger keeps lower-ranked matches stronger.
        length: size of the returned table, ``>= match_number``; entries ``r >= k`` are 0 (a
            row of detrex's ``weight_table``). Defaults to ``match_number``.

    Returns:
        ``[length]`` float32, e.g. ``[1, exp(-1 / 1.5)] = [1, 0.5134]`` for ``k = 2``.
    """
    length = match_number if length is None else length
    if match_number < 1 or length < match_number:
        raise ValueError(
            f"prime_sample_weights: expected 1 <= match_number <= length, got match_number="
            f"{match_number}, length={length}"
        )
    if not tau > 0 or not math.isfinite(tau):
        raise ValueError(f"prime_sample_weights: expected a finite tau > 0, got {tau}")
    weights = torch.zeros(length, device=device)
    weights[:match_number] = torch.exp(-torch.arange(match_number, device=device) / tau)
    return weights


def ia_bce_loss(
    logits: Tensor,
    batch_index: Tensor,
    query_index: Tensor,
    labels: Tensor,
    ious: Tensor,
    num_boxes: float,
    alpha: float = 0.25,
    gamma: float = 2.0,
    groups: Tensor | None = None,
    rank_weights: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """IA-BCE classification loss (see the module docstring for the formula).

    Args:
        logits: ``[B, Q, K]`` class logits.
        batch_index, query_index: ``[M]`` int64, the matched predictions.
        labels: ``[M]`` int64, the class of each match's target.
        ious: ``[M]`` IoU of each matched predicted box with its target box (no gradient is
            taken through it).
        num_boxes: normalizer, the (average per worker) number of ground-truth boxes.
        alpha: score exponent in the quality ``t``.
        gamma: focusing exponent of the negatives' weight ``p ** gamma``.
        groups: ``[M]`` target ids (:func:`local_rank`); needed with ``rank_weights``.
        rank_weights: ``[R]`` weight of the ``r``-th best match of a target
            (:func:`prime_sample_weights`); None weights every match 1 (one-to-one layers,
            denoising queries).

    Returns:
        ``(loss, match_weights)``: the scalar loss (float32 for float16 / bfloat16 / float32
        logits) and the ``[M]`` prime-sample weight of every match (ones without
        ``rank_weights``), which also weight the box losses.
    """
    if logits.dim() != 3:
        raise ValueError(f"ia_bce_loss: expected logits [B, Q, K], got {tuple(logits.shape)}")
    num_matches = batch_index.shape[0]
    for name, value in (("query_index", query_index), ("labels", labels), ("ious", ious)):
        if value.shape != (num_matches,):
            raise ValueError(
                f"ia_bce_loss: expected {name} of shape [M] = [{num_matches}] like batch_index, "
                f"got {tuple(value.shape)}"
            )
    if (rank_weights is None) != (groups is None):
        raise ValueError("ia_bce_loss: pass groups and rank_weights together, or neither")

    logits = full_precision(logits)
    with autocast_disabled(logits.device):
        prob = logits.sigmoid()
        # Matchers return CPU indices; one move here instead of one per indexing.
        positive = tuple(index.to(logits.device) for index in (batch_index, query_index, labels))
        quality = alignment_quality(prob[positive], full_precision(ious).to(prob.dtype), alpha)
        if rank_weights is None:
            match_weights = torch.ones_like(quality)  # [M]
        else:
            rank = local_rank(quality, groups.to(quality.device))
            if num_matches and int(rank.max()) >= rank_weights.shape[0]:
                raise ValueError(
                    f"ia_bce_loss: a target has {int(rank.max()) + 1} matches but rank_weights "
                    f"has only {rank_weights.shape[0]} entries"
                )
            match_weights = rank_weights.to(quality)[rank]
        target = quality * match_weights

        positive_weight = torch.zeros_like(logits).index_put(positive, target)
        negative_weight = (prob**gamma).index_put(positive, 1 - target)
        loss = -positive_weight * F.logsigmoid(logits) - negative_weight * F.logsigmoid(-logits)
        return loss.sum() / num_boxes, match_weights
