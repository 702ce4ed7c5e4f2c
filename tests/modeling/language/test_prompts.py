"""parse_prompt / build_prompt normalization and split_phrases_into_chunks."""

from __future__ import annotations

import pytest

from detr_ext.modeling.language import (
    build_prompt,
    parse_prompt,
    repeated_phrases,
    split_phrases_into_chunks,
)


@pytest.mark.parametrize(
    "prompt, phrases",
    [
        ("red circle . triangle .", ["red circle", "triangle"]),
        ("red circle . triangle", ["red circle", "triangle"]),
        ("  red   circle .triangle. ", ["red circle", "triangle"]),
        ("a . . b .", ["a", "b"]),
        ("red\tcircle\n. Blue Square", ["red circle", "Blue Square"]),
        ("single", ["single"]),
    ],
)
def test_parse_prompt_normalizes(prompt, phrases):
    assert parse_prompt(prompt) == phrases


@pytest.mark.parametrize("prompt", ["", "   ", " . . ", "."])
def test_parse_prompt_without_phrase_raises(prompt):
    with pytest.raises(ValueError, match="no phrase"):
        parse_prompt(prompt)


def test_parse_prompt_rejects_non_string():
    with pytest.raises(TypeError, match="str"):
        parse_prompt(["red circle"])


def test_repeated_phrases_groups_copies_whatever_case_and_spacing():
    phrases = ["Circle", "square", "red  circle", "circle", "Red circle", "SQUARE", "star"]
    assert repeated_phrases(phrases) == [[0, 3], [1, 5], [2, 4]]
    assert repeated_phrases(["circle", "square"]) == []
    assert repeated_phrases([]) == []


def test_build_prompt_spans():
    text, spans = build_prompt(["red circle", "triangle"])
    assert text == "red circle . triangle ."
    assert spans == [(0, 10), (13, 21)]


def test_build_prompt_spans_cover_each_phrase_and_round_trip():
    phrases = ["  big   red circle", "triangle", "x", "zxqvy square  "]
    text, spans = build_prompt(phrases)
    normalized = [" ".join(phrase.split()) for phrase in phrases]
    assert [text[start:end] for start, end in spans] == normalized
    assert parse_prompt(text) == normalized
    assert build_prompt(parse_prompt(text)) == (text, spans)


@pytest.mark.parametrize(
    "phrases, error, match",
    [
        (["red", ""], ValueError, "phrase 1 is empty"),
        (["red", "   "], ValueError, "phrase 1 is empty"),
        (["3.5 mm screw"], ValueError, "contains '.'"),
        ([], ValueError, "at least one phrase"),
        ("red circle", TypeError, "sequence of phrases"),
        (["red", 3], TypeError, "phrase 1 should be a str"),
    ],
)
def test_build_prompt_bad_input(phrases, error, match):
    with pytest.raises(error, match=match):
        build_prompt(phrases)


def _num_tokens(tokenizer, phrases):
    return len(tokenizer(build_prompt(phrases)[0])["input_ids"])


def test_chunks_cover_all_phrases_in_order_and_fit(minilm_tokenizer):
    phrases = [
        f"{colour} {shape}"
        for colour in ("red", "zxqvy", "blue")
        for shape in ("circle", "triangle", "square", "hexagonal prism")
    ]
    max_text_len = 16
    chunks = split_phrases_into_chunks(phrases, minilm_tokenizer, max_text_len)
    assert len(chunks) > 1
    assert [index for chunk in chunks for index in chunk] == list(range(len(phrases)))
    for position, chunk in enumerate(chunks):
        assert _num_tokens(minilm_tokenizer, [phrases[i] for i in chunk]) <= max_text_len
        # Greedy: the next phrase would not have fitted into this chunk.
        if position + 1 < len(chunks):
            grown = [phrases[i] for i in chunk + [chunks[position + 1][0]]]
            assert _num_tokens(minilm_tokenizer, grown) > max_text_len


def test_chunks_single_prompt_when_it_fits(minilm_tokenizer):
    phrases = ["red circle", "triangle", "blue square"]
    assert split_phrases_into_chunks(phrases, minilm_tokenizer, 256) == [[0, 1, 2]]
    # The budget is inclusive: a prompt of exactly max_text_len tokens fits.
    exact = _num_tokens(minilm_tokenizer, phrases)
    assert split_phrases_into_chunks(phrases, minilm_tokenizer, exact) == [[0, 1, 2]]
    assert len(split_phrases_into_chunks(phrases, minilm_tokenizer, exact - 1)) == 2


def test_chunk_too_long_phrase_is_alone(minilm_tokenizer):
    long_phrase = " ".join(["circle"] * 20)
    phrases = ["red", long_phrase, "blue", "green"]
    chunks = split_phrases_into_chunks(phrases, minilm_tokenizer, 10)
    assert chunks == [[0], [1], [2, 3]]


def test_chunks_edge_cases(minilm_tokenizer):
    assert split_phrases_into_chunks([], minilm_tokenizer, 10) == []
    with pytest.raises(ValueError, match="max_text_len"):
        split_phrases_into_chunks(["red"], minilm_tokenizer, 0)
    with pytest.raises(ValueError, match="phrase 1"):
        split_phrases_into_chunks(["red", "a.b"], minilm_tokenizer, 10)


class _CountingTokenizer:
    """A tokenizer that counts its calls (inference runs the chunking for every image)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.calls = 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.tokenizer(*args, **kwargs)


def test_chunking_tokenizes_a_fitting_vocabulary_once(minilm_tokenizer):
    names = [f"category {index}" for index in range(80)]
    tokenizer = _CountingTokenizer(minilm_tokenizer)
    assert split_phrases_into_chunks(names, tokenizer, 256) == [list(range(80))]
    assert tokenizer.calls == 1


def test_chunking_a_long_vocabulary_takes_logarithmic_tokenizations(minilm_tokenizer):
    names = [f"category {index}" for index in range(240)]
    tokenizer = _CountingTokenizer(minilm_tokenizer)
    chunks = split_phrases_into_chunks(names, tokenizer, 256)
    assert [index for chunk in chunks for index in chunk] == list(range(240))
    assert len(chunks) >= 3
    # Bisection: one try of the whole rest plus about log2(240) = 8 per chunk, where growing
    # one phrase at a time would tokenize once per phrase (240 times).
    assert tokenizer.calls <= 10 * len(chunks)
    for position, chunk in enumerate(chunks[:-1]):
        grown = [names[i] for i in chunk + [chunks[position + 1][0]]]
        assert _num_tokens(minilm_tokenizer, grown) > 256
