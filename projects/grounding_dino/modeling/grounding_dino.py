"""Grounding DINO (Liu et al., "Grounding DINO: Marrying DINO with Grounded Pre-Training for
Open-Set Object Detection", 2023) on this library's DINO, as a detectron2 meta-architecture.

Detection becomes phrase grounding (GLIP): the class head is replaced by region-token alignment
scores, so the "classes" are whatever phrases the text prompt names. Per image:

1. the prompt (``batched_inputs[i]["prompt"]``, e.g. ``"red circle . triangle ."``, or the
   configured category names) is tokenized and encoded by a transformers text model (``bert``,
   BERT family or CLIP's text tower) and projected to the detector width (``feat_map``);
2. image features (backbone -> neck, as DINO) and text features are fused by GLIP's
   bi-directional cross-attention before every deformable encoder layer (feature enhancer),
   the encoder tokens that best match some phrase become the decoder's anchors (language-guided
   query selection) and every decoder layer also cross-attends to the text;
3. each decoder layer, the encoder proposals and the denoising queries are scored against
   every token (:class:`~detr_ext.layers.TokenAlignmentHead`); training targets are the token
   maps of the phrases (:class:`~detr_ext.modeling.GroundingCriterion`); at inference a phrase's
   score is the mean token probability over its tokens and ``pred_classes`` is the phrase index.

Prompts longer than the text model's limit are split into chunks of whole phrases at inference
(each chunk is a separate pass; the detections of all chunks are merged); in training such a
prompt is an error naming the phrases that do not fit, unless ``sample_training_categories``
gives each image without a prompt of its own a prompt of its objects' categories and random
others that fit (GLIP's recipe for Objects365 / LVIS vocabularies).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.structures import ImageList
from torch import Tensor, nn

from detr_ext.layers import (
    DenoisingQueries,
    GroundingDINOTransformer,
    TokenAlignmentHead,
    dn_post_process,
    keep_parameters_in_graph,
    prepare_for_cdn,
)
from detr_ext.layers.box_ops import inverse_sigmoid
from detr_ext.modeling import DeformableDetectorBase
from detr_ext.modeling.language import (
    TextEncoder,
    TokenizedPrompts,
    category_prompt,
    num_prompt_tokens,
    parse_prompt,
    phrase_token_weights,
    repeated_phrases,
    sample_training_prompts,
)

from .grounded_inference import GroundedInference

__all__ = ["GroundingDINO"]


@META_ARCH_REGISTRY.register()
class GroundingDINO(GroundedInference, DeformableDetectorBase):
    """DINO whose classes are the phrases of a text prompt.

    Takes the arguments of :class:`~detr_ext.modeling.DeformableDetectorBase` except
    ``num_classes`` (the number of ``category_names``), and:

    Args:
        text_encoder: the language backbone (:class:`~detr_ext.modeling.language.TextEncoder`),
            stored as ``bert`` (Grounding DINO's name).
        category_names: the phrases of the default prompt, in contiguous class order (e.g. a
            dataset's ``thing_classes``): images without a ``"prompt"`` are detected (and
            trained) with ``"name_0 . name_1 . ..."``, and then ``pred_classes`` are class ids.
        transformer: a :class:`~detr_ext.layers.GroundingDINOTransformer` with
            ``two_stage_num_proposals == num_queries``.
        num_queries: matching queries (= encoder proposals kept).
        select_box_nums_for_evaluation: detections per image at inference.
        dn_number, label_noise_ratio, box_noise_scale: contrastive denoising as in DINO; the
            content query of a denoising box is ``label_enc`` of its phrase's mean text
            feature, and label noise swaps it for another phrase of the batch.
        alignment_normalize: cosine-similarity alignment with a learned temperature (CLIP)
            instead of the scaled dot product (GLIP, Grounding DINO).
        sample_training_categories: in training, prompt each image without a ``"prompt"`` of
            its own with its objects' categories plus randomly drawn other categories, as many
            as fit in ``text_encoder.max_text_len`` tokens, in random order
            (:func:`~detr_ext.modeling.language.sample_category_phrases`), instead of the
            default prompt of all ``category_names``: needed when those do not fit in one
            prompt (Objects365, LVIS). Inference is unchanged (every name, in chunks).

    Input (detectron2 contract) per image: ``image``, optional ``prompt`` (str), and in training
    ``instances`` whose ``gt_classes`` index the phrases of the image's prompt.

    Output at inference, per image: ``{"instances": Instances(pred_boxes, scores,
    pred_classes), "phrases": list[str]}``, where ``pred_classes[j]`` indexes ``phrases``.
    """

    # gt_classes index each image's prompt phrases (checked in prepare_grounding_targets).
    gt_classes_are_class_indices = False

    def __init__(
        self,
        *,
        text_encoder: TextEncoder,
        category_names: Sequence[str],
        transformer: GroundingDINOTransformer,
        num_queries: int,
        select_box_nums_for_evaluation: int = 300,
        dn_number: int = 100,
        label_noise_ratio: float = 0.5,
        box_noise_scale: float = 1.0,
        alignment_normalize: bool = False,
        sample_training_categories: bool = False,
        **kwargs: Any,
    ) -> None:
        if "num_classes" in kwargs:
            raise ValueError(
                "GroundingDINO: num_classes is the number of category_names; expected no "
                f"num_classes argument, got num_classes={kwargs['num_classes']}"
            )
        category_names, default_prompt = category_prompt(category_names)
        super().__init__(
            transformer=transformer,
            num_queries=num_queries,
            num_classes=len(category_names),
            select_box_nums_for_evaluation=select_box_nums_for_evaluation,
            **kwargs,
        )
        if transformer.two_stage_num_proposals != num_queries:
            raise ValueError(
                f"GroundingDINO: num_queries={num_queries} but transformer."
                f"two_stage_num_proposals={transformer.two_stage_num_proposals}; expected them "
                "equal (one proposal per query)"
            )
        self.category_names = category_names
        self.default_prompt = default_prompt
        self.bert = text_encoder
        self.feat_map = nn.Linear(text_encoder.hidden_size, self.embed_dim)
        nn.init.xavier_uniform_(self.feat_map.weight)
        nn.init.zeros_(self.feat_map.bias)
        self.label_enc = nn.Linear(self.embed_dim, self.embed_dim)
        self.dn_number = dn_number
        self.label_noise_ratio = label_noise_ratio
        self.box_noise_scale = box_noise_scale
        self.sample_training_categories = sample_training_categories

        class_head = TokenAlignmentHead(self.embed_dim, normalize=alignment_normalize)
        _, box_head = self.new_prediction_heads()
        self.init_neck_weights()
        num_pred = transformer.decoder.num_layers + 1
        self.class_embed = nn.ModuleList(copy.deepcopy(class_head) for _ in range(num_pred))
        self.bbox_embed = nn.ModuleList(copy.deepcopy(box_head) for _ in range(num_pred))
        transformer.decoder.class_embed = self.class_embed
        transformer.decoder.bbox_embed = self.bbox_embed

    # ------------------------------------------------------------------ text

    def set_category_names(self, category_names: Sequence[str]) -> None:
        """Detect ``category_names`` for images without a ``"prompt"``: the default prompt
        becomes ``"name_0 . name_1 . ..."`` and ``pred_classes`` index these names.
        Evaluation sets a test set's own names this way (``detr_ext.engine``).

        Raises:
            TypeError, ValueError: see :func:`~detr_ext.modeling.language.category_prompt`.
        """
        self.category_names, self.default_prompt = category_prompt(category_names)
        self.num_classes = len(self.category_names)

    def prompts(self, batched_inputs: Sequence[Mapping[str, Any]]) -> list[str]:
        """Each image's ``"prompt"``, or the default prompt of the category names when it has
        none (no key, or None). A given prompt without phrases (``""``, ``" . "``) is an error
        when it is parsed, not the default: that would detect every category unasked. At
        inference a given prompt that repeats a phrase (whatever its case and spacing) is an
        error: every box would be returned once per copy."""
        prompts = []
        for index, item in enumerate(batched_inputs):
            prompt = item.get("prompt")
            if prompt is None:
                prompt = self.default_prompt
            elif not isinstance(prompt, str):
                raise ValueError(
                    f"GroundingDINO: batched_inputs[{index}]['prompt'] must be a str such as "
                    f"'red circle . triangle .', got {type(prompt).__name__}"
                )
            elif not self.training:
                phrases = parse_prompt(prompt)
                repeated = repeated_phrases(phrases)
                if repeated:
                    copies = [[phrases[i] for i in group] for group in repeated]
                    raise ValueError(
                        f"GroundingDINO: the prompt of batched_inputs[{index}] ({prompt!r}) "
                        f"repeats phrases {copies} (phrase indices {repeated}); the text "
                        "encoder reads the copies alike, so every box would be returned once "
                        "per copy. Expected each phrase once"
                    )
            prompts.append(prompt)
        return prompts

    def encode_text(self, tokenized: TokenizedPrompts) -> tuple[Tensor, Tensor]:
        """Text features projected to the detector width and their padding mask.

        Returns:
            ``(text [B, T, C], text_padding_mask [B, T])`` (True on padding).
        """
        input_ids = tokenized.input_ids.to(self.device)
        attention_mask = tokenized.attention_mask.to(self.device)
        features = self.bert(input_ids, attention_mask)
        return self.feat_map(features), ~attention_mask

    # ------------------------------------------------------------------ forward

    def forward(self, batched_inputs: list[dict[str, Any]]) -> dict[str, Tensor] | list[dict]:
        """Losses in training, ``[{"instances", "phrases"}]`` in inference (see the class)."""
        images, padding_mask = self.preprocess_image(batched_inputs)
        prompts = self.prompts(batched_inputs)
        if self.training:
            prompts, label_maps = self.sampled_training_prompts(batched_inputs, prompts)
            tokenized = self.bert.tokenize(prompts)
            targets = self.prepare_grounding_targets(batched_inputs, tokenized, label_maps)
            outputs = self.forward_outputs(images, padding_mask, targets, tokenized)
            return self.compute_losses(outputs, targets)
        results, phrases = self.grounded_inference(images, padding_mask, prompts)
        processed = self.postprocess(results, batched_inputs, images.image_sizes)
        for output, image_phrases in zip(processed, phrases, strict=True):
            output["phrases"] = image_phrases
        return processed

    def sampled_training_prompts(
        self, batched_inputs: Sequence[Mapping[str, Any]], prompts: list[str]
    ) -> tuple[list[str], list[Tensor | None]]:
        """With ``sample_training_categories``, each image without a prompt of its own gets one
        of its objects' categories and random others that fit
        (:func:`~detr_ext.modeling.language.sample_training_prompts`); else ``prompts`` as
        they are, with no label maps."""
        if not self.sample_training_categories:
            return prompts, [None] * len(prompts)
        return sample_training_prompts(
            batched_inputs,
            prompts,
            self.category_names,
            self.bert.tokenizer,
            self.bert.max_text_len,
            where="GroundingDINO: ",
        )

    def prepare_grounding_targets(
        self,
        batched_inputs: Sequence[Mapping[str, Any]],
        tokenized: TokenizedPrompts,
        label_maps: Sequence[Tensor | None] | None = None,
    ) -> list[dict[str, Tensor]]:
        """DETR targets plus ``positive_map [n, T]``, the token map of each target's phrase.
        ``label_maps`` (from :meth:`sampled_training_prompts`) turn an image's category ids into
        the phrase indices of its sampled prompt.

        Raises:
            ValueError: a ``gt_classes`` value is not a phrase index of the image's prompt, or
                a phrase with ground truth lost all its tokens to truncation.
        """
        targets = self.prepare_targets(batched_inputs)
        if label_maps is None:
            label_maps = [None] * len(targets)
        for index, (target, maps, phrases, cut, label_map) in enumerate(
            zip(
                targets,
                tokenized.positive_maps,
                tokenized.phrases,
                tokenized.truncated_phrases,
                label_maps,
                strict=True,
            )
        ):
            if label_map is not None:
                target["labels"] = label_map.to(target["labels"].device)[target["labels"]]
            labels = target["labels"]
            if len(labels) and (labels.min() < 0 or labels.max() >= len(phrases)):
                raise ValueError(
                    f"GroundingDINO: batched_inputs[{index}] has gt_classes "
                    f"{sorted(set(labels.tolist()))}, expected phrase indices in [0, "
                    f"{len(phrases)}) of its prompt {phrases}"
                )
            if cut and batched_inputs[index].get("prompt") is None:
                # Every image without a prompt would lose these categories; found at the first
                # step instead of the first image that has one of them, hours in.
                needed = num_prompt_tokens(self.bert.tokenizer, self.default_prompt)
                raise ValueError(
                    f"GroundingDINO: the default prompt of the {len(phrases)} category names "
                    f"needs {needed} tokens but the text encoder takes "
                    f"{self.bert.max_text_len} (model.text_encoder.max_text_len), so categories "
                    f"{[phrases[i] for i in cut][:10]} would never be trained; expected "
                    f"model.text_encoder.max_text_len >= {needed} (or shorter category names), "
                    "or model.sample_training_categories=True to prompt each image with its "
                    "objects' categories and random others that fit"
                )
            lost = sorted(set(labels.tolist()) & set(cut))
            if lost:
                raise ValueError(
                    f"GroundingDINO: the prompt of batched_inputs[{index}] is longer than the "
                    f"text encoder's {self.bert.max_text_len} tokens "
                    "(model.text_encoder.max_text_len) and its phrases "
                    f"{[phrases[i] for i in lost]}, which have ground truth, were cut off; "
                    "expected a shorter prompt (fewer or shorter phrases) in training"
                )
            target["positive_map"] = maps.to(self.device)[labels]
        return targets

    def forward_outputs(
        self,
        images: ImageList,
        padding_mask: Tensor,
        targets: list[dict[str, Tensor]] | None,
        tokenized: TokenizedPrompts,
    ) -> dict[str, Any]:
        """Token logits of every decoder layer, the encoder proposals and the denoising queries.

        Returns DINO's prediction dict with ``pred_logits [B, Q, T]`` over the ``T`` text
        tokens (padded tokens at :data:`~detr_ext.layers.MASKED_LOGIT`), and ``text_mask
        [B, T]`` (True on padding).
        """
        feats, masks, pos_embeds = self.multi_level_inputs(images, padding_mask)
        text, text_padding_mask = self.encode_text(tokenized)
        dn = None
        if targets is not None and self.dn_number > 0:
            dn = self.denoising_queries(targets, text, tokenized)
        states, init_reference, references, enc_states, enc_boxes, text_memory = self.transformer(
            feats,
            masks,
            pos_embeds,
            text,
            text_padding_mask,
            dn_query_label=None if dn is None else dn.query_label,
            dn_query_bbox=None if dn is None else dn.query_bbox,
            attn_mask=None if dn is None else dn.attn_mask,
        )
        if self.training:
            # label_enc (a Linear: weight and bias) is used by denoising queries only: none
            # when a batch has no objects.
            states = keep_parameters_in_graph(states, self.label_enc)

        outputs_classes, outputs_coords = [], []
        for layer in range(states.shape[0]):
            reference = init_reference if layer == 0 else references[layer - 1]
            outputs_classes.append(
                self.class_embed[layer](states[layer], text_memory, text_padding_mask)
            )
            delta = self.bbox_embed[layer](states[layer])
            outputs_coords.append((delta + inverse_sigmoid(reference)).sigmoid())
        outputs_class, outputs_coord, dn_class, dn_coord = dn_post_process(
            torch.stack(outputs_classes),
            torch.stack(outputs_coords),
            None if dn is None else dn.dn_meta,
        )
        outputs: dict[str, Any] = self.layer_outputs(outputs_class, outputs_coord)
        outputs["enc_outputs"] = {
            "pred_logits": self.class_embed[-1](enc_states, text_memory, text_padding_mask),
            "pred_boxes": enc_boxes,
        }
        outputs["text_mask"] = text_padding_mask
        if dn is not None:
            outputs["dn_outputs"] = self.layer_outputs(dn_class, dn_coord)
            outputs["dn_meta"] = dn.dn_meta
        return outputs

    def denoising_queries(
        self, targets: Sequence[Mapping[str, Tensor]], text: Tensor, tokenized: TokenizedPrompts
    ) -> DenoisingQueries | None:
        """DINO's contrastive denoising queries with phrase embeddings as labels.

        The label of a denoising box is its phrase's mean projected text feature (before
        fusion) through ``label_enc``; phrases of all images form one table, so label noise
        replaces a phrase by any phrase of the batch.
        """
        phrase_features, offsets = [], []
        num_phrases = 0
        for image_index, maps in enumerate(tokenized.positive_maps):
            weights = phrase_token_weights(maps.to(text))
            phrase_features.append(weights @ text[image_index, : maps.shape[1]])
            offsets.append(num_phrases)
            num_phrases += maps.shape[0]
        table = self.label_enc(torch.cat(phrase_features))  # [sum K_i, C]
        dn_targets = [
            {"labels": target["labels"] + offset, "boxes": target["boxes"]}
            for target, offset in zip(targets, offsets, strict=True)
        ]
        return prepare_for_cdn(
            dn_targets,
            lambda labels: table[labels],
            num_queries=self.num_queries,
            num_classes=max(num_phrases, 1),
            dn_number=self.dn_number,
            label_noise_ratio=self.label_noise_ratio,
            box_noise_scale=self.box_noise_scale,
        )
