"""sample_category_phrases: the training prompt of one image when a vocabulary does not fit in
one prompt (GLIP's recipe for Objects365 / LVIS), with the packaged MiniLM tokenizer."""

from __future__ import annotations

import itertools

import pytest
import torch

from detr_ext.modeling.language import (
    build_prompt,
    num_prompt_tokens,
    parse_prompt,
    sample_category_phrases,
    sample_training_prompts,
)

COLORS = ("red", "blue", "green", "yellow", "black", "white", "brown", "pink")
SHAPES = ("circle", "square", "triangle", "star", "box", "car", "dog", "bottle")
SIZES = ("small", "large", "old", "new")
# 224 distinct names of 2 or 3 words: about 700 tokens as one prompt.
NAMES = [" ".join(words) for words in itertools.product(SIZES[:2], COLORS, SHAPES)]
NAMES += [" ".join(words) for words in itertools.product(COLORS, SHAPES)]
NAMES += [" ".join(words) for words in itertools.product(SIZES, SHAPES)]
LIMIT = 64


def tokens(tokenizer, indices) -> int:
    text, _ = build_prompt([NAMES[i] for i in indices])
    return num_prompt_tokens(tokenizer, text)


def draw(tokenizer, positives, seed, limit=LIMIT, names=NAMES):
    generator = torch.Generator().manual_seed(seed)
    return sample_category_phrases(names, positives, tokenizer, limit, generator=generator)


def test_names_are_distinct_and_too_long_for_one_prompt(minilm_tokenizer):
    assert len(set(NAMES)) == len(NAMES) == 224
    assert tokens(minilm_tokenizer, range(len(NAMES))) > 10 * LIMIT


def test_keeps_every_positive_and_fills_the_budget_with_distinct_negatives(minilm_tokenizer):
    longest = max(tokens(minilm_tokenizer, [i]) - 2 for i in range(len(NAMES)))  # no CLS/SEP
    positives = [5, 200, 17, 5]
    for seed in range(20):
        chosen = draw(minilm_tokenizer, positives, seed)
        assert set(positives) <= set(chosen)
        assert len(chosen) == len(set(chosen)) and all(0 <= i < len(NAMES) for i in chosen)
        used = tokens(minilm_tokenizer, chosen)
        assert used <= LIMIT
        # The next negative (name + separator) did not fit: the budget is used up to that.
        assert used > LIMIT - longest - 1, (seed, used)


def test_draws_vary_and_positives_take_any_place(minilm_tokenizer):
    draws = [draw(minilm_tokenizer, [3], seed) for seed in range(30)]
    assert len({tuple(sorted(chosen)) for chosen in draws}) == 30  # other negatives each time
    places = {chosen.index(3) for chosen in draws}
    assert len(places) > 5  # not always first: the order carries no label
    assert draw(minilm_tokenizer, [3], 7) == draws[7]  # the generator decides


def test_an_image_without_objects_gets_negatives_only(minilm_tokenizer):
    chosen = draw(minilm_tokenizer, [], 0)
    assert len(chosen) > 5 and tokens(minilm_tokenizer, chosen) <= LIMIT


def test_a_vocabulary_that_fits_is_shuffled_whole(minilm_tokenizer):
    names = ["circle", "square", "triangle", "red star"]
    chosen = draw(minilm_tokenizer, [1], 0, names=names)
    assert sorted(chosen) == [0, 1, 2, 3]
    assert {tuple(draw(minilm_tokenizer, [1], seed, names=names)) for seed in range(20)} != {
        (0, 1, 2, 3)
    }


def test_positives_that_do_not_fit_or_do_not_exist_are_errors(minilm_tokenizer):
    with pytest.raises(ValueError, match=r"category ids \[224\] are outside \[0, 224\) of the 224"):
        draw(minilm_tokenizer, [0, 224], 0)
    with pytest.raises(ValueError, match=r"outside"):
        draw(minilm_tokenizer, [-1], 0)
    many = list(range(40))
    with pytest.raises(ValueError, match=r"the 40 categories of one training image need \d+ "):
        draw(minilm_tokenizer, many, 0)
    # One name longer than the whole budget on its own.
    with pytest.raises(ValueError, match=r"need \d+ tokens as a prompt, more than the text"):
        draw(minilm_tokenizer, [0], 0, limit=4, names=["a very long category name", "dog"])


def test_positives_that_fill_the_budget_exactly_are_the_whole_prompt(minilm_tokenizer):
    positives = [0, 100, 200]
    limit = tokens(minilm_tokenizer, positives)
    for seed in range(5):
        assert sorted(draw(minilm_tokenizer, positives, seed, limit=limit)) == positives
    assert len(draw(minilm_tokenizer, positives, 0, limit=limit + 4)) > 3


def test_the_generator_decides_the_order_of_several_positives(minilm_tokenizer):
    positives = [1, 50, 90, 130, 170]
    torch.manual_seed(0)
    first = draw(minilm_tokenizer, positives, 3)
    torch.manual_seed(1)  # the global generator must not matter
    assert draw(minilm_tokenizer, positives, 3) == first


class ContextTokenizer:
    """A tokenizer whose count depends on the neighbours: one token per word and per ".",
    plus one where the word "b" follows "a ." directly (as BPE merges can)."""

    def __call__(self, text, **kwargs):
        words = text.split()
        merges = sum(1 for i in range(2, len(words)) if words[i - 2 : i + 1] == ["a", ".", "b"])
        return {"input_ids": [0] * (len(words) + merges + 2)}


def test_negatives_are_dropped_until_a_context_dependent_count_fits():
    names = ["a", "b", "c", "d", "e", "f"]
    tokenizer = ContextTokenizer()
    for seed in range(40):
        chosen = draw(tokenizer, [0, 1], seed, limit=8, names=names)
        assert {0, 1} <= set(chosen)
        text, _ = build_prompt([names[i] for i in chosen])
        assert len(tokenizer(text)["input_ids"]) <= 8, (seed, text)


def test_training_prompts_of_a_batch(minilm_tokenizer):
    from detectron2.structures import Instances

    def item(classes, prompt=None):
        instances = Instances((8, 8))
        instances.gt_classes = torch.tensor(classes, dtype=torch.int64)
        return {"instances": instances} | ({"prompt": prompt} if prompt else {})

    inputs = [item([0], "own phrase ."), item([7, 3]), {"image": None}]
    torch.manual_seed(0)
    prompts, maps = sample_training_prompts(
        inputs, ["own phrase .", "all", "all"], NAMES, minilm_tokenizer, LIMIT
    )
    assert prompts[0] == "own phrase ." and maps[0] is None
    for index in (1, 2):  # an image without instances gets negatives only
        assert maps[index].dtype == torch.int64 and maps[index].shape == (len(NAMES),)
        kept = (maps[index] >= 0).nonzero().flatten().tolist()
        assert set(maps[index].tolist()) == set(range(len(kept))) | {-1}
        phrases = parse_prompt(prompts[index])
        assert all(phrases[maps[index][c]] == NAMES[c] for c in kept)
    assert maps[1][7] >= 0 and maps[1][3] >= 0
    with pytest.raises(
        ValueError, match=r"^Model: batched_inputs\[1\]: category ids \[999\] are outside"
    ):
        sample_training_prompts(
            [inputs[0], item([999])], ["x", "y"], NAMES, minilm_tokenizer, LIMIT, where="Model: "
        )
