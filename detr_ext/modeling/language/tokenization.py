"""Tokenize a batch of prompts and map each phrase to its tokens."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .positive_map import positive_map_from_spans
from .prompts import build_prompt, parse_prompt

__all__ = ["TokenizedPrompts", "tokenize_prompts"]


@dataclass
class TokenizedPrompts:
    """A tokenized batch of B prompts, padded to the longest one (T tokens).

    Attributes:
        input_ids: ``[B, T]`` int64 token ids.
        attention_mask: ``[B, T]`` bool, True for real tokens (special tokens included),
            False for padding; ``text_padding_mask`` is its negation.
        positive_maps: B tensors ``[K_b, T]`` float 0/1, row k marks the tokens of phrase k.
        phrases: B lists of the K_b (normalized) phrases, in prompt order.
        truncated_phrases: per prompt, indices of phrases with no token left after truncation
            (their ``positive_maps`` row is all zero).
    """

    input_ids: Tensor
    attention_mask: Tensor
    positive_maps: list[Tensor]
    phrases: list[list[str]]
    truncated_phrases: list[list[int]]

    @property
    def text_padding_mask(self) -> Tensor:
        """``[B, T]`` bool, True = padding (the image-mask convention of the detectors)."""
        return ~self.attention_mask

    def to(self, device: torch.device | str) -> TokenizedPrompts:
        """A copy with every tensor moved to ``device``."""
        return TokenizedPrompts(
            input_ids=self.input_ids.to(device),
            attention_mask=self.attention_mask.to(device),
            positive_maps=[positive_map.to(device) for positive_map in self.positive_maps],
            phrases=[list(phrases) for phrases in self.phrases],
            truncated_phrases=[list(indices) for indices in self.truncated_phrases],
        )


def tokenize_prompts(tokenizer: Any, prompts: Sequence[str], max_text_len: int) -> TokenizedPrompts:
    """Tokenize B prompts (each normalized with ``build_prompt(parse_prompt(p))``).

    Sequences longer than ``max_text_len`` tokens (special tokens included) are truncated; the
    batch is padded to its longest sequence.

    Args:
        tokenizer: a transformers *fast* tokenizer (offset mappings are needed).
        prompts: B prompt strings such as ``"red circle . triangle ."``.
        max_text_len: the most tokens per prompt.

    Raises:
        TypeError: ``prompts`` is a single ``str`` or the tokenizer is not a fast one.
        ValueError: no prompt, a prompt without a phrase, or a phrase the tokenizer gives no
            token (only characters it drops, such as zero-width or control characters).
    """
    if isinstance(prompts, str) or not isinstance(prompts, Sequence):
        raise TypeError(
            "tokenize_prompts: expected a sequence of prompt strings (one per image), "
            f"got {type(prompts).__name__}"
        )
    if len(prompts) == 0:
        raise ValueError("tokenize_prompts: expected at least one prompt, got none")
    if not getattr(tokenizer, "is_fast", False):
        raise TypeError(
            "tokenize_prompts: a fast (Rust `tokenizers`) tokenizer is needed for character "
            f"offsets, got {type(tokenizer).__name__}"
        )
    phrases = [parse_prompt(prompt) for prompt in prompts]
    texts_and_spans = [build_prompt(prompt_phrases) for prompt_phrases in phrases]
    encoding = tokenizer(
        [text for text, _ in texts_and_spans],
        padding="longest",
        truncation=True,
        max_length=max_text_len,
        return_offsets_mapping=True,
        return_special_tokens_mask=True,
        return_tensors="pt",
    )
    positive_maps = [
        positive_map_from_spans(
            encoding["offset_mapping"][b], spans, encoding["special_tokens_mask"][b].bool()
        )
        for b, (_, spans) in enumerate(texts_and_spans)
    ]
    truncated = [
        _phrases_without_tokens(
            prompt_index,
            phrases[prompt_index],
            spans,
            positive_map,
            encoding["offset_mapping"][prompt_index],
            encoding["special_tokens_mask"][prompt_index].bool(),
        )
        for prompt_index, (positive_map, (_, spans)) in enumerate(
            zip(positive_maps, texts_and_spans, strict=True)
        )
    ]
    return TokenizedPrompts(
        input_ids=encoding["input_ids"].long(),
        attention_mask=encoding["attention_mask"].bool(),
        positive_maps=positive_maps,
        phrases=phrases,
        truncated_phrases=truncated,
    )


def _phrases_without_tokens(
    prompt_index: int,
    phrases: Sequence[str],
    spans: Sequence[tuple[int, int]],
    positive_map: Tensor,
    offsets: Tensor,
    special: Tensor,
) -> list[int]:
    """Indices of the phrases cut off by truncation (no token left). A phrase without a token
    although a later token was kept is not truncated: the tokenizer dropped all its characters,
    which is an error (its scores would silently stay 0)."""
    text_tokens = offsets[~special]
    last_end = int(text_tokens[:, 1].max()) if len(text_tokens) else 0
    cut = []
    for index in torch.nonzero(positive_map.sum(dim=1) == 0).flatten().tolist():
        if spans[index][1] <= last_end:
            raise ValueError(
                f"tokenize_prompts: phrase {index} ({phrases[index]!r}) of prompt {prompt_index} "
                "gives the tokenizer no token (it drops all its characters, e.g. zero-width or "
                "control characters); expected phrases with letters, digits or symbols"
            )
        cut.append(index)
    return cut
