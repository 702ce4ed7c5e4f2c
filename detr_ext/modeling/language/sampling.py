"""Training prompts for vocabularies longer than the text encoder takes (Objects365, LVIS).

A detection dataset becomes grounding data by prompting each image with its category names.
When all names do not fit in one prompt (``max_text_len`` tokens: LVIS's 1,203 names make a
prompt of 3,803 tokens of the packaged MiniLM tokenizer, COCO's 80 one of 195), each training
image gets its own prompt (GLIP's and Grounding DINO's recipe): the categories of its objects
plus randomly drawn other categories as negatives, as many as fit, in random order. Each image
thus learns its own objects against a changing set of others; evaluation prompts with every
name, in chunks (:func:`~detr_ext.modeling.language.split_phrases_into_chunks`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from .prompts import build_prompt, num_prompt_tokens, split_phrases_into_chunks

__all__ = ["sample_category_phrases", "sample_training_prompts"]


def sample_category_phrases(
    names: Sequence[str],
    positives: Sequence[int],
    tokenizer: Callable[..., Any],
    max_text_len: int,
    generator: torch.Generator | None = None,
) -> list[int]:
    """The categories of one training prompt, in prompt order: all of ``positives`` and as
    many other categories, drawn at random, as fit in ``max_text_len`` tokens; then shuffled.

    Args:
        names: the K category names (phrases).
        positives: indices into ``names`` that must be in the prompt (the image's objects'
            categories); repeats are ignored.
        tokenizer: the text encoder's transformers tokenizer.
        max_text_len: the token budget, special tokens included.
        generator: random source (default: torch's global one, seeded per rank by the trainer).

    Returns:
        distinct category indices; phrase ``j`` of ``build_prompt([names[i] for i in result])``
        is category ``result[j]``.

    Raises:
        ValueError: a positive index outside ``[0, K)``, or the positives' names alone do not
            fit in ``max_text_len`` tokens.
    """
    num_names = len(names)
    wanted = list(dict.fromkeys(int(index) for index in positives))
    outside = [index for index in wanted if not 0 <= index < num_names]
    if outside:
        raise ValueError(
            f"category ids {outside} are outside [0, {num_names}) of the {num_names} category names"
        )
    chosen = set(wanted)
    others = [
        index for index in torch.randperm(num_names, generator=generator).tolist()
        if index not in chosen
    ]  # fmt: skip
    # Positives first (in random order), then the shuffled negatives: the longest prefix that
    # fits keeps every positive and as many negatives as the budget allows.
    order = [wanted[i] for i in torch.randperm(len(wanted), generator=generator).tolist()]
    # Each phrase takes a token and its separator another, so no more than max_text_len / 2
    # negatives can fit: tokenizing the rest (thousands of LVIS names) would be wasted.
    order += others[: max_text_len // 2]
    prefix = len(split_phrases_into_chunks([names[i] for i in order], tokenizer, max_text_len)[0])
    if prefix < len(wanted) or (
        wanted and not _fits([names[i] for i in wanted], tokenizer, max_text_len)
    ):
        text, _ = build_prompt([names[i] for i in wanted])
        raise ValueError(
            f"the {len(wanted)} categories of one training image need "
            f"{num_prompt_tokens(tokenizer, text)} tokens as a prompt, more than the text "
            f"encoder's {max_text_len} (model.text_encoder.max_text_len): expected fewer or "
            f"shorter category names per image, got {[names[i] for i in wanted][:10]}"
        )
    selected = order[:prefix]
    shuffled = [selected[i] for i in torch.randperm(len(selected), generator=generator).tolist()]
    # Tokenizers whose pieces depend on the neighbouring text may count the shuffled prompt a
    # token or two longer: drop negatives until it fits (the positives alone fit, see above).
    negatives = [j for j, index in enumerate(shuffled) if index not in chosen]
    while negatives and not _fits([names[i] for i in shuffled], tokenizer, max_text_len):
        del shuffled[negatives.pop()]
    return shuffled


def _fits(phrases: Sequence[str], tokenizer: Callable[..., Any], max_text_len: int) -> bool:
    text, _ = build_prompt(phrases)
    return num_prompt_tokens(tokenizer, text) <= max_text_len


def sample_training_prompts(
    batched_inputs: Sequence[Mapping[str, Any]],
    prompts: Sequence[str],
    category_names: Sequence[str],
    tokenizer: Callable[..., Any],
    max_text_len: int,
    where: str = "",
) -> tuple[list[str], list[torch.Tensor | None]]:
    """A batch's training prompts: each image without a ``"prompt"`` of its own gets one drawn
    by :func:`sample_category_phrases` from its ``instances.gt_classes`` (category ids).

    Args:
        batched_inputs: the detectron2 inputs of the batch.
        prompts: each image's prompt as it stands (the default prompt of all categories for an
            image without one).
        category_names: the K category names, in class id order.
        tokenizer, max_text_len: the text encoder's tokenizer and token budget.
        where: prefix of error messages, e.g. the model's name.

    Returns:
        ``(prompts, label_maps)``: ``label_maps[i]`` is ``[K]`` int64, category id -> phrase
        index in the new prompt (-1 for categories left out), or ``None`` for an image whose
        prompt is its own (its ``gt_classes`` already index its phrases).

    Raises:
        ValueError: an image's categories do not fit in one prompt, or a ``gt_classes`` value
            is not a category id; the message names the image.
    """
    prompts = list(prompts)
    label_maps: list[torch.Tensor | None] = [None] * len(prompts)
    for index, item in enumerate(batched_inputs):
        if item.get("prompt") is not None:
            continue
        instances = item.get("instances")
        classes = [] if instances is None else instances.gt_classes.tolist()
        try:
            chosen = sample_category_phrases(category_names, classes, tokenizer, max_text_len)
        except ValueError as error:
            raise ValueError(f"{where}batched_inputs[{index}]: {error}") from None
        prompts[index], _ = build_prompt([category_names[i] for i in chosen])
        label_map = torch.full((len(category_names),), -1, dtype=torch.int64)
        label_map[chosen] = torch.arange(len(chosen))
        label_maps[index] = label_map
    return prompts, label_maps
