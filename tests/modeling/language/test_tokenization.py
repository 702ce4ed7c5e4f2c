"""Positive maps (phrase -> tokens) and batched prompt tokenization with the MiniLM tokenizer."""

from __future__ import annotations

import pytest
import torch

from detr_ext.modeling.language import positive_map_from_spans, tokenize_prompts


def _phrase_tokens(tokenizer, input_ids, row):
    return tokenizer.convert_ids_to_tokens(input_ids[row.bool()].tolist())


def test_positive_map_from_spans_overlap_rules():
    # "ab cd ." with tokens [CLS] "ab" "c" "d" "." [SEP] [PAD]
    offsets = torch.tensor([[0, 0], [0, 2], [3, 4], [4, 5], [6, 7], [0, 0], [0, 0]])
    special = torch.tensor([1, 0, 0, 0, 0, 1, 1], dtype=torch.bool)
    expected = torch.tensor(
        [[0, 1, 0, 0, 0, 0, 0], [0, 0, 1, 1, 0, 0, 0], [0, 1, 1, 0, 0, 0, 0]],
        dtype=torch.float32,
    )
    positive = positive_map_from_spans(offsets, [(0, 2), (3, 5), (1, 4)], special)
    assert positive.dtype == torch.float32
    assert torch.equal(positive, expected)
    # Empty ranges are never positive, even without a special-tokens mask.
    assert torch.equal(positive_map_from_spans(offsets, [(0, 2), (3, 5), (1, 4)]), expected)
    assert positive_map_from_spans(offsets, []).shape == (0, 7)
    # A zero-length token inside a span is not positive either.
    assert positive_map_from_spans(torch.tensor([[3, 3], [3, 5]]), [(0, 10)]).tolist() == [[0, 1]]


def test_positive_map_flags_special_token_with_characters():
    # A special token can carry characters (e.g. "[MASK]" typed in the prompt).
    offsets = torch.tensor([[0, 0], [0, 6], [7, 10], [0, 0]])
    special = torch.tensor([True, True, False, True])
    assert positive_map_from_spans(offsets, [(0, 10)], special).tolist() == [[0, 0, 1, 0]]


@pytest.mark.parametrize(
    "offsets, spans, special, match",
    [
        (torch.zeros(5, 3), [(0, 1)], None, "offset_mapping must be"),
        (torch.zeros(5, 2), [(0, 1)], torch.zeros(4, dtype=torch.bool), "special_tokens_mask"),
        (torch.zeros(5, 2), [(3, 3)], None, "span 0"),
        (torch.zeros(5, 2), [(0, 2), (-1, 2)], None, "span 1"),
    ],
)
def test_positive_map_bad_input(offsets, spans, special, match):
    with pytest.raises(ValueError, match=match):
        positive_map_from_spans(offsets, spans, special)


def test_multi_token_words_map_to_their_phrase(minilm_tokenizer):
    tokenized = tokenize_prompts(
        minilm_tokenizer, ["zxqvy circle . triangle . hexagonal prism ."], 256
    )
    input_ids, positive = tokenized.input_ids[0], tokenized.positive_maps[0]
    assert tokenized.phrases == [["zxqvy circle", "triangle", "hexagonal prism"]]
    assert positive.shape == (3, input_ids.shape[0])
    assert tokenized.truncated_phrases == [[]]
    zxqvy_pieces = minilm_tokenizer.tokenize("zxqvy")
    assert len(zxqvy_pieces) > 1  # the made-up word splits into word pieces
    assert _phrase_tokens(minilm_tokenizer, input_ids, positive[0]) == zxqvy_pieces + ["circle"]
    for row, phrase in zip(positive, tokenized.phrases[0]):
        assert _phrase_tokens(minilm_tokenizer, input_ids, row) == minilm_tokenizer.tokenize(phrase)
    # Each token belongs to at most one phrase, and the " . " separators to none.
    assert positive.sum(dim=0).max() == 1
    dot_id = minilm_tokenizer.convert_tokens_to_ids(".")
    assert positive[:, input_ids == dot_id].sum() == 0


def test_repeated_words_belong_to_their_own_phrase(minilm_tokenizer):
    tokenized = tokenize_prompts(minilm_tokenizer, ["red circle . red square ."], 256)
    input_ids, positive = tokenized.input_ids[0], tokenized.positive_maps[0]
    red_positions = torch.nonzero(input_ids == minilm_tokenizer.convert_tokens_to_ids("red"))
    red_positions = red_positions.flatten().tolist()
    assert len(red_positions) == 2
    first, second = red_positions
    assert positive[:, first].tolist() == [1.0, 0.0]
    assert positive[:, second].tolist() == [0.0, 1.0]


def test_uppercase_prompt_keeps_original_offsets(minilm_tokenizer):
    tokenized = tokenize_prompts(minilm_tokenizer, ["Red CIRCLE . Blue Square"], 256)
    assert tokenized.phrases == [["Red CIRCLE", "Blue Square"]]
    rows = tokenized.positive_maps[0]
    assert _phrase_tokens(minilm_tokenizer, tokenized.input_ids[0], rows[0]) == ["red", "circle"]
    assert _phrase_tokens(minilm_tokenizer, tokenized.input_ids[0], rows[1]) == ["blue", "square"]


def test_truncation_keeps_in_range_tokens_and_lists_cut_phrases(minilm_tokenizer):
    prompt = "red circle . zxqvy square . triangle ."
    full = tokenize_prompts(minilm_tokenizer, [prompt], 256)
    # Keep [CLS] red circle . z ##x, then [SEP]: phrase 1 is cut inside "zxqvy".
    max_text_len = 7
    cut = tokenize_prompts(minilm_tokenizer, [prompt], max_text_len)
    assert cut.input_ids.shape == (1, max_text_len)
    full_map, cut_map = full.positive_maps[0], cut.positive_maps[0]
    kept = max_text_len - 1  # all but the final [SEP]
    assert torch.equal(cut_map[:, :kept], full_map[:, :kept])
    assert cut_map[:, kept].sum() == 0  # [SEP]
    assert 0 < cut_map[1].sum() < full_map[1].sum()  # partially kept phrase
    assert cut_map[2].sum() == 0  # fully cut phrase: all-zero row ...
    assert cut.truncated_phrases == [[2]]  # ... and listed
    assert full.truncated_phrases == [[]]
    assert cut.phrases == full.phrases


@pytest.mark.parametrize("dropped", ["\u200b", "\x07", "\u200b\u200d"])
def test_phrase_without_tokens_is_an_error_not_truncation(minilm_tokenizer, dropped):
    """A phrase the tokenizer drops entirely (zero-width or control characters only) used to be
    listed as "truncated" (all-zero row, its scores silently 0). Truncation is still reported as
    such when the phrase lies after the last kept token."""
    for prompt, index in ((f"circle . {dropped} . square", 1), (f"circle . {dropped}", 1)):
        with pytest.raises(ValueError, match=rf"phrase {index} .* of prompt 1 gives .* no token"):
            tokenize_prompts(minilm_tokenizer, ["a .", prompt], 256)
    # Cut off by truncation (only [CLS] circle . square [SEP] kept): listed, not an error.
    cut = tokenize_prompts(minilm_tokenizer, [f"circle . square . {dropped} . red"], 5)
    assert cut.truncated_phrases == [[2, 3]]


def test_batch_padding_mask_and_specials(minilm_tokenizer):
    prompts = ["red circle .", "zxqvy circle . blue square . triangle", "a ."]
    tokenized = tokenize_prompts(minilm_tokenizer, prompts, 256)
    # Each prompt alone is not padded: its length is the number of its real tokens.
    lengths = [tokenize_prompts(minilm_tokenizer, [p], 256).input_ids.shape[1] for p in prompts]
    assert len(set(lengths)) == 3
    batch_size, num_tokens = tokenized.input_ids.shape
    assert batch_size == 3 and num_tokens == max(lengths)
    assert tokenized.input_ids.dtype == torch.int64
    assert tokenized.attention_mask.dtype == torch.bool
    assert tokenized.attention_mask.sum(dim=1).tolist() == lengths
    for b, length in enumerate(lengths):
        assert tokenized.attention_mask[b, :length].all()
        assert not tokenized.attention_mask[b, length:].any()
    assert torch.equal(tokenized.text_padding_mask, ~tokenized.attention_mask)
    # Specials and padding are never positive: [CLS] at 0, [SEP] at length - 1, then padding.
    special_ids = set(minilm_tokenizer.all_special_ids)
    for b, positive in enumerate(tokenized.positive_maps):
        assert positive.shape == (len(tokenized.phrases[b]), num_tokens)
        is_special = torch.tensor([i in special_ids for i in tokenized.input_ids[b].tolist()])
        assert is_special[0] and is_special[lengths[b] - 1]
        assert positive[:, is_special].sum() == 0
        assert (positive.sum(dim=1) > 0).all()


def test_tokenized_prompts_to_device(minilm_tokenizer):
    tokenized = tokenize_prompts(minilm_tokenizer, ["red circle .", "a ."], 256)
    moved = tokenized.to("meta")
    assert moved.input_ids.device.type == "meta"
    assert moved.attention_mask.device.type == "meta"
    assert all(p.device.type == "meta" for p in moved.positive_maps)
    assert tokenized.input_ids.device.type == "cpu"
    assert moved.phrases == tokenized.phrases


@pytest.mark.parametrize(
    "prompts, error, match",
    [
        ("red circle .", TypeError, "sequence of prompt strings"),
        ([], ValueError, "at least one prompt"),
        (["red .", " . "], ValueError, "no phrase"),
    ],
)
def test_tokenize_bad_input(minilm_tokenizer, prompts, error, match):
    with pytest.raises(error, match=match):
        tokenize_prompts(minilm_tokenizer, prompts, 256)
