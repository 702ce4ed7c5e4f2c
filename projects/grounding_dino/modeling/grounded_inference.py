"""Grounding DINO's inference: each image's prompt, split into chunks of phrases when it is too
long for the text encoder, scored phrase by phrase; the best (query, phrase) pairs are kept.

A mixin of :class:`~.grounding_dino.GroundingDINO` (which provides ``bert``,
``forward_outputs``, ``select_box_nums_for_evaluation`` and ``_make_instances``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from detectron2.structures import ImageList, Instances
from torch import Tensor

from detr_ext.modeling.language import (
    build_prompt,
    parse_prompt,
    phrase_token_weights,
    split_phrases_into_chunks,
)

__all__ = ["GroundedInference"]


class GroundedInference:
    """Text-prompted inference of :class:`~.grounding_dino.GroundingDINO`."""

    def grounded_inference(
        self, images: ImageList, padding_mask: Tensor, prompts: Sequence[str]
    ) -> tuple[list[Instances], list[list[str]]]:
        """Detections per image in the input frame, and each image's phrases.

        Prompts that fit the text encoder run as one batch; otherwise each image runs once per
        chunk of phrases (:func:`~detr_ext.modeling.language.split_phrases_into_chunks`) and the
        best (query, phrase) pairs over all chunks are kept.
        """
        phrases = [parse_prompt(prompt) for prompt in prompts]
        tokenizer, limit = self.bert.tokenizer, self.bert.max_text_len
        chunks = [split_phrases_into_chunks(p, tokenizer, limit) for p in phrases]
        if all(len(image_chunks) == 1 for image_chunks in chunks):
            scores, boxes = self.phrase_scores(images, padding_mask, list(prompts))
            # Each image ranks its own phrases only: the batch's score tensor has a zero column
            # for every phrase another image's prompt has more.
            results = [
                self.top_detections(s[:, : len(p)], b, size)
                for s, b, size, p in zip(scores, boxes, images.image_sizes, phrases, strict=True)
            ]
            return results, phrases
        results = []
        for index, image_chunks in enumerate(chunks):
            image = ImageList(images.tensor[index : index + 1], [images.image_sizes[index]])
            chunk_scores, chunk_boxes = [], []
            for chunk in image_chunks:
                prompt, _ = build_prompt([phrases[index][i] for i in chunk])
                scores, boxes = self.phrase_scores(image, padding_mask[index : index + 1], [prompt])
                # Columns of this chunk -> the image's phrase indices.
                full = scores.new_zeros(scores.shape[1], len(phrases[index]))
                full[:, chunk] = scores[0]
                chunk_scores.append(full)
                chunk_boxes.append(boxes[0])
            results.append(
                self.top_detections(
                    torch.cat(chunk_scores), torch.cat(chunk_boxes), images.image_sizes[index]
                )
            )
        return results, phrases

    def phrase_scores(
        self, images: ImageList, padding_mask: Tensor, prompts: list[str]
    ) -> tuple[Tensor, Tensor]:
        """Phrase probabilities ``[B, Q, K]`` (K = most phrases in the batch; absent ones 0) and
        boxes ``[B, Q, 4]`` (normalized ``cxcywh``) of the last decoder layer."""
        tokenized = self.bert.tokenize(prompts)
        outputs = self.forward_outputs(images, padding_mask, None, tokenized)
        token_prob = outputs["pred_logits"].sigmoid()  # [B, Q, T]
        num_phrases = max(maps.shape[0] for maps in tokenized.positive_maps)
        scores = token_prob.new_zeros(*token_prob.shape[:2], num_phrases)
        for index, maps in enumerate(tokenized.positive_maps):
            weights = phrase_token_weights(maps.to(token_prob))  # [K_i, T]
            scores[index, :, : maps.shape[0]] = token_prob[index] @ weights.T
        return scores, outputs["pred_boxes"]

    def top_detections(
        self, scores: Tensor, boxes: Tensor, image_size: tuple[int, int]
    ) -> Instances:
        """The ``select_box_nums_for_evaluation`` best (query, phrase) pairs of one image.

        Args:
            scores: ``[Q, K]`` phrase probabilities; boxes: ``[Q, 4]`` normalized ``cxcywh``.
        """
        num_phrases = scores.shape[1]
        k = min(self.select_box_nums_for_evaluation, scores.numel())
        top_scores, pair_index = torch.topk(scores.flatten(), k)
        query_index = torch.div(pair_index, num_phrases, rounding_mode="floor")
        return self._make_instances(
            top_scores, pair_index % num_phrases, boxes[query_index], image_size
        )
