"""Text prompts of grounding detectors: phrases joined GLIP / Grounding-DINO style.

A prompt is a list of phrases separated by ``" . "`` and closed by ``" ."``, e.g.
``"red circle . triangle ."``. Phrase ``k`` of a prompt is category ``k`` of the image's
annotations and ``pred_classes == k`` of the detector's outputs. A ``"."`` inside a phrase is
not possible in this convention (``"3.5 mm screw"`` would be two phrases).

This module imports no ``transformers``: datasets and evaluators can parse prompts cheaply.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

__all__ = [
    "PHRASE_SEPARATOR",
    "build_prompt",
    "category_prompt",
    "num_prompt_tokens",
    "parse_prompt",
    "phrase_key",
    "repeated_phrases",
    "split_phrases_into_chunks",
]

logger = logging.getLogger(__name__)

PHRASE_SEPARATOR = " . "
_PROMPT_END = " ."


def _normalize_phrase(phrase: str) -> str:
    # Runs of whitespace (tabs, doubled spaces, newlines) become one space, so that equal
    # phrases typed differently give the same prompt and the same tokens.
    return " ".join(phrase.split())


def phrase_key(phrase: str) -> str:
    """What identifies a phrase or category name whatever its case and spacing: ``"Red  circle"``
    and ``"red circle"`` give the same key (an uncased text encoder reads them alike)."""
    return _normalize_phrase(phrase).casefold()


def repeated_phrases(phrases: Sequence[str]) -> list[list[int]]:
    """Groups of indices of ``phrases`` that are the same phrase whatever their case and
    spacing (:func:`phrase_key`), in order of first occurrence; empty when all differ."""
    groups: dict[str, list[int]] = {}
    for index, phrase in enumerate(phrases):
        groups.setdefault(phrase_key(phrase), []).append(index)
    return [indices for indices in groups.values() if len(indices) > 1]


def parse_prompt(prompt: str) -> list[str]:
    """Split a prompt into phrases: ``"red circle . triangle"`` -> ``["red circle", "triangle"]``.

    The final ``" ."`` is optional; surrounding and repeated whitespace is dropped and empty
    pieces (``"a . . b"``, a trailing ``"."``) are skipped.

    Raises:
        TypeError: ``prompt`` is not a ``str``.
        ValueError: the prompt holds no phrase.
    """
    if not isinstance(prompt, str):
        raise TypeError(f"parse_prompt: expected the prompt as a str, got {type(prompt).__name__}")
    phrases = [_normalize_phrase(piece) for piece in prompt.split(".")]
    phrases = [phrase for phrase in phrases if phrase]
    if not phrases:
        raise ValueError(
            f"parse_prompt: the prompt {prompt!r} has no phrase; expected phrases separated by "
            f"{PHRASE_SEPARATOR!r}, e.g. 'red circle . triangle .'"
        )
    return phrases


def build_prompt(phrases: Sequence[str]) -> tuple[str, list[tuple[int, int]]]:
    """Join phrases into a prompt and give each phrase's character span in it.

    ``["red circle", "triangle"]`` -> ``("red circle . triangle .", [(0, 10), (13, 21)])``: the
    span ``(start, end)`` is half-open, ``prompt[start:end]`` is the (whitespace-normalized)
    phrase. ``build_prompt(parse_prompt(p))`` is the canonical form of prompt ``p``.

    Raises:
        TypeError: ``phrases`` is a single ``str`` or holds a non-``str``.
        ValueError: no phrase, an empty (or blank) phrase, or a phrase containing ``"."``.
    """
    if isinstance(phrases, str) or not isinstance(phrases, Sequence):
        raise TypeError(
            "build_prompt: expected a sequence of phrases (list[str]), "
            f"got {type(phrases).__name__}"
        )
    if len(phrases) == 0:
        raise ValueError("build_prompt: expected at least one phrase, got an empty sequence")
    pieces: list[str] = []
    spans: list[tuple[int, int]] = []
    cursor = 0
    for index, phrase in enumerate(phrases):
        if not isinstance(phrase, str):
            raise TypeError(
                f"build_prompt: phrase {index} should be a str, got {type(phrase).__name__}"
            )
        normalized = _normalize_phrase(phrase)
        if not normalized:
            raise ValueError(f"build_prompt: phrase {index} is empty ({phrase!r})")
        if "." in normalized:
            raise ValueError(
                f"build_prompt: phrase {index} ({phrase!r}) contains '.', which separates phrases"
            )
        if pieces:
            cursor += len(PHRASE_SEPARATOR)
        spans.append((cursor, cursor + len(normalized)))
        pieces.append(normalized)
        cursor += len(normalized)
    return PHRASE_SEPARATOR.join(pieces) + _PROMPT_END, spans


def category_prompt(category_names: Sequence[str]) -> tuple[list[str], str]:
    """``(names, prompt)``: a text-prompted detector's category names (``model.category_names``)
    as a list of str and their default prompt ``"name_0 . name_1 ."`` (:func:`build_prompt`).
    Names that differ only in case or spacing get a warning: an uncased text encoder reads
    them as one phrase, so their classes cannot be told apart.

    Raises:
        TypeError: a single ``str`` (it would be split into letters, one category each) or
            another non-sequence.
        ValueError: no name, a blank name or one containing ``"."`` (the phrase separator),
            naming ``model.category_names`` and how to rename.
    """
    if isinstance(category_names, str) or not isinstance(category_names, Sequence):
        raise TypeError(
            "expected model.category_names as a list of names such as ['circle', 'square'], "
            f"got {type(category_names).__name__} {category_names!r}"
        )
    names = [str(name) for name in category_names]
    try:
        prompt, _ = build_prompt(names)
    except ValueError as error:
        raise ValueError(
            f"model.category_names cannot make the default prompt: {error}. Each category "
            "name becomes one phrase of 'name_0 . name_1 .', so a name may not contain '.' nor "
            "be blank: rename such a category (in the dataset json, which model.category_names "
            "usually follows), e.g. '3.5 mm screw' -> '3,5 mm screw'"
        ) from None
    same = [[names[index] for index in group] for group in repeated_phrases(names)]
    if same:
        logger.warning(
            "model.category_names %s differ only in case or spacing; an uncased text encoder "
            "reads each group as one phrase, so their classes cannot be told apart.",
            same,
        )
    return names, prompt


def num_prompt_tokens(tokenizer: Callable[..., Any], text: str) -> int:
    """The tokens of ``text``, special tokens included, without truncation."""
    # verbose=False: counting a prompt longer than the model's limit is the point here, so
    # transformers' "longer than the specified maximum sequence length" warning is noise.
    encoded = tokenizer(text, add_special_tokens=True, truncation=False, verbose=False)
    return len(encoded["input_ids"])


def split_phrases_into_chunks(
    phrases: Sequence[str], tokenizer: Callable[..., Any], max_text_len: int
) -> list[list[int]]:
    """Group phrases, in order, into prompts that each fit the text encoder.

    Used when a vocabulary (e.g. all category names of a dataset) is too long for one prompt:
    the detector runs once per chunk. Chunks are filled greedily: each is the longest run of
    consecutive phrases whose ``build_prompt(...)`` tokenizes to at most ``max_text_len`` tokens,
    special tokens included. A single phrase longer than the limit is a chunk of its own (the
    tokenizer will truncate it).

    Args:
        phrases: the K phrases.
        tokenizer: a transformers tokenizer (called as ``tokenizer(text)["input_ids"]``).
        max_text_len: the token budget of one prompt, special tokens included.

    Returns:
        Lists of phrase indices; concatenated they are ``0 .. K-1``. Empty for no phrase.
    """
    if isinstance(max_text_len, bool) or not isinstance(max_text_len, int) or max_text_len < 1:
        raise ValueError(
            f"split_phrases_into_chunks: max_text_len must be a positive int, got {max_text_len!r}"
        )
    if len(phrases) == 0:
        return []
    build_prompt(phrases)  # validates every phrase up front, with its index in the message

    def fits(start: int, stop: int) -> bool:
        # Tokenizing the whole candidate (rather than adding per-phrase counts) stays exact for
        # tokenizers whose pieces depend on the neighbouring text.
        text, _ = build_prompt(phrases[start:stop])
        return num_prompt_tokens(tokenizer, text) <= max_text_len

    # A prompt's token count grows with every phrase added, so the longest run from ``start``
    # that fits is found by bisection: O(log K) tokenizations per chunk instead of one per
    # phrase (80 COCO names fitting in one prompt: one tokenization instead of 80).
    chunks: list[list[int]] = []
    start = 0
    while start < len(phrases):
        # stop = low always qualifies (a phrase too long on its own is a chunk of its own).
        low, high = start + 1, len(phrases)
        if fits(start, high):  # the usual case: all the rest fits
            low = high
        while low < high:
            middle = (low + high + 1) // 2
            if fits(start, middle):
                low = middle
            else:
                high = middle - 1
        chunks.append(list(range(start, low)))
        start = low
    return chunks
