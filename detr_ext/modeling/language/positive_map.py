"""Positive maps: which text tokens belong to which phrase of a prompt."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["phrase_token_weights", "positive_map_from_spans"]


def positive_map_from_spans(
    offset_mapping: Tensor,
    spans: Sequence[tuple[int, int]],
    special_tokens_mask: Tensor | None = None,
) -> Tensor:
    """Mark, for each phrase, the tokens whose characters overlap the phrase's characters.

    Token ``t`` is positive for span ``(start, end)`` when its half-open character range
    ``offset_mapping[t]`` overlaps ``[start, end)``. Tokens with an empty range (special tokens
    and padding, which fast tokenizers give offsets ``(0, 0)``) and tokens flagged in
    ``special_tokens_mask`` are never positive. Offsets refer to the original string even when
    the tokenizer lowercases or normalizes it, so the spans of ``build_prompt`` apply directly.

    Args:
        offset_mapping: ``[T, 2]`` integer character ranges of the tokens (from a fast
            tokenizer's ``return_offsets_mapping=True``).
        spans: K half-open character ranges ``(start, end)``, one per phrase.
        special_tokens_mask: ``[T]`` bool (or 0/1), True for special/padding tokens, or None.

    Returns:
        ``[K, T]`` float32 0/1 on ``offset_mapping``'s device; a phrase cut off by truncation has
        an all-zero row.
    """
    if offset_mapping.dim() != 2 or offset_mapping.shape[1] != 2:
        raise ValueError(
            "positive_map_from_spans: offset_mapping must be [T, 2], "
            f"got shape {tuple(offset_mapping.shape)}"
        )
    num_tokens = offset_mapping.shape[0]
    device = offset_mapping.device
    if special_tokens_mask is not None and tuple(special_tokens_mask.shape) != (num_tokens,):
        raise ValueError(
            f"positive_map_from_spans: special_tokens_mask must be [T] = [{num_tokens}], "
            f"got shape {tuple(special_tokens_mask.shape)}"
        )
    for index, span in enumerate(spans):
        if len(span) != 2 or not 0 <= span[0] < span[1]:
            raise ValueError(
                f"positive_map_from_spans: span {index} must be (start, end) with "
                f"0 <= start < end, got {span!r}"
            )
    if len(spans) == 0:
        return torch.zeros(0, num_tokens, dtype=torch.float32, device=device)

    span_tensor = torch.as_tensor(spans, dtype=torch.long, device=device)  # [K, 2]
    token_start = offset_mapping[:, 0].long()[None, :]  # [1, T]
    token_end = offset_mapping[:, 1].long()[None, :]
    overlaps = (token_start < span_tensor[:, 1:2]) & (token_end > span_tensor[:, 0:1])  # [K, T]
    has_characters = token_end > token_start
    positive = overlaps & has_characters
    if special_tokens_mask is not None:
        positive &= ~special_tokens_mask.to(device=device, dtype=torch.bool)[None, :]
    return positive.float()


def phrase_token_weights(positive_maps: Tensor) -> Tensor:
    """Each phrase's tokens weighted by ``1 / (number of its tokens)``: ``[K, T]`` maps
    (nonzero = the token belongs to the phrase) -> ``[K, T]`` rows that sum to 1 (a phrase
    without tokens stays all 0). ``weights @ token_values`` averages a per-token quantity
    (probability, cost, feature) over each phrase's tokens."""
    if positive_maps.dim() != 2:
        raise ValueError(
            f"phrase_token_weights: expected positive maps [K, T], got {tuple(positive_maps.shape)}"
        )
    return positive_maps / positive_maps.sum(-1, keepdim=True).clamp(min=1)
