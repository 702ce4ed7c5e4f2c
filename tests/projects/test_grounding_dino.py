"""projects/grounding_dino: the registered GroundingDINO, built from its shapes config with a
tiny randomly initialised text model (the packaged tokenizer, no download): training losses
and gradients, inference with default and custom prompts, phrase mapping and prompt chunking,
errors, and the IDEA-Research checkpoint converter."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from detectron2.config import LazyConfig, instantiate
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.structures import Boxes, Instances

import projects.grounding_dino  # noqa: F401  (registers the model and the converter)
from detr_ext.checkpoint import get_converter
from detr_ext.layers import MASKED_LOGIT
from projects.grounding_dino.modeling import GroundingDINO

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = REPO_ROOT / "projects" / "grounding_dino" / "configs"
TINY_TEXT = {
    "num_hidden_layers": 1,
    "hidden_size": 32,
    "num_attention_heads": 2,
    "intermediate_size": 64,
}
CATEGORIES = ["circle", "square", "triangle"]


def tiny_model_config(name: str = "grounding_dino_shapes.py"):
    cfg = LazyConfig.load(str(CONFIG_DIR / name))
    model = cfg.model
    model.text_encoder.config_overrides = TINY_TEXT
    model.category_names = CATEGORIES
    if name == "grounding_dino_shapes.py":
        model.num_queries = 12
        model.select_box_nums_for_evaluation = 12
        model.dn_number = 6
        model.transformer.encoder.num_layers = 1
        model.transformer.decoder.num_layers = 2
    return cfg


@pytest.fixture(scope="module")
def model() -> GroundingDINO:
    torch.manual_seed(0)
    return instantiate(tiny_model_config().model)


def batch(prompts=(None, "red circle . blue square ."), labels=((0, 2), (1,))) -> list[dict]:
    inputs = []
    for prompt, image_labels in zip(prompts, labels, strict=True):
        instances = Instances((64, 80))
        count = len(image_labels)
        boxes = torch.tensor([[8.0, 8.0, 40.0, 36.0], [30.0, 20.0, 70.0, 60.0]])[:count]
        instances.gt_boxes = Boxes(boxes)
        instances.gt_classes = torch.tensor(image_labels, dtype=torch.int64)
        item = {"image": torch.randint(0, 255, (3, 64, 80), dtype=torch.uint8)}
        item["instances"] = instances
        if prompt is not None:
            item["prompt"] = prompt
        inputs.append(item)
    return inputs


def test_registered_and_default_prompt(model):
    assert META_ARCH_REGISTRY.get("GroundingDINO") is GroundingDINO
    assert model.default_prompt == "circle . square . triangle ."
    assert model.num_classes == 3
    with pytest.raises(ValueError, match="num_classes is the number of category_names"):
        cfg = tiny_model_config()
        cfg.model.num_classes = 3
        instantiate(cfg.model)


def test_training_losses_reach_image_text_and_fusion(model):
    model.train()
    model.zero_grad()
    losses = model(batch())
    for key in ("loss_class", "loss_bbox", "loss_class_enc", "loss_class_dn", "loss_giou_dn_0"):
        assert torch.isfinite(losses[key]) and losses[key] > 0, key
    sum(losses.values()).backward()
    grads = {name: p.grad for name, p in model.named_parameters() if p.requires_grad}
    for prefix in (
        "backbone.",
        "feat_map.",
        "label_enc.",
        "transformer.encoder.fusion_layers.0.",
        "transformer.encoder.text_layers.0.",
        "transformer.decoder.layers.1.attentions.1.",  # text cross-attention
        "transformer.decoder.class_embed.2.",  # encoder proposals' head (also class_embed.2)
    ):
        assert any(
            g is not None and g.abs().sum() > 0 for n, g in grads.items() if n.startswith(prefix)
        ), prefix
    # The packaged text encoder is frozen in the config.
    assert not any(p.requires_grad for p in model.bert.parameters())


def test_gt_classes_must_index_the_prompt_phrases(model):
    model.train()
    with pytest.raises(ValueError, match=r"gt_classes \[2\], expected phrase indices in \[0, 2\)"):
        model(batch(prompts=("red circle . blue square .",), labels=((2,),)))


@pytest.mark.parametrize("prompt", ["", " . ", "  "])
def test_a_prompt_without_phrases_is_an_error_not_the_default(model, prompt):
    """An empty prompt used to fall back to the default one (every category) silently."""
    model.eval()
    image = {"image": torch.randint(0, 255, (3, 64, 80), dtype=torch.uint8), "prompt": prompt}
    with torch.no_grad(), pytest.raises(ValueError, match="has no phrase"):
        model([image])
    model.train()
    with pytest.raises(ValueError, match="has no phrase"):
        model(batch(prompts=(prompt, None), labels=((), (1,))))


def test_truncated_phrase_with_ground_truth_is_an_error():
    cfg = tiny_model_config()
    cfg.model.text_encoder.max_text_len = 6
    model = instantiate(cfg.model).train()
    prompt = "red circle . blue square . green triangle . yellow circle ."
    with pytest.raises(
        ValueError, match=r"phrases \['yellow circle'\], which have ground truth, were cut off"
    ):
        model(batch(prompts=(prompt,), labels=((3,),)))


def fake_outputs(model, boxes_by_word: dict[str, list[float]]):
    """A stand-in for the network's last layer: query ``j`` lights up (logit +8) exactly the
    tokens of word ``j`` of ``boxes_by_word`` wherever the prompt has it, and predicts its
    box; every other (query, token) pair has logit -8. Tokens come from the real tokenizer."""
    tokenizer = model.bert.tokenizer
    words = list(boxes_by_word)

    def forward_outputs(images, padding_mask, targets, tokenized):
        batch_size, num_tokens = tokenized.input_ids.shape
        logits = torch.full((batch_size, len(words), num_tokens), -8.0)
        for b in range(batch_size):
            pieces = tokenizer.convert_ids_to_tokens(tokenized.input_ids[b].tolist())
            for q, word in enumerate(words):
                word_pieces = tokenizer.tokenize(word)
                for t in range(num_tokens - len(word_pieces) + 1):
                    if pieces[t : t + len(word_pieces)] == word_pieces:
                        logits[b, q, t : t + len(word_pieces)] = 8.0
            logits[b, :, ~tokenized.attention_mask[b]] = MASKED_LOGIT
        boxes = torch.tensor([boxes_by_word[w] for w in words])[None].repeat(batch_size, 1, 1)
        return {"pred_logits": logits, "pred_boxes": boxes}

    return forward_outputs


BOXES = {"circle": [0.25, 0.25, 0.2, 0.2], "triangle": [0.7, 0.6, 0.3, 0.2], "red": [0.5] * 4}


def detect(model, prompt, threshold=0.5):
    image = {"image": torch.zeros(3, 40, 40, dtype=torch.uint8), "height": 40, "width": 40}
    if prompt is not None:
        image["prompt"] = prompt
    output = model.eval()([image])[0]
    kept = output["instances"][output["instances"].scores > threshold]
    return output["phrases"], kept


def test_a_prompt_naming_one_class_detects_only_that_class(model, monkeypatch):
    monkeypatch.setattr(model, "forward_outputs", fake_outputs(model, BOXES))
    phrases, kept = detect(model, "triangle")
    assert phrases == ["triangle"]
    assert kept.pred_classes.tolist() == [0]
    torch.testing.assert_close(kept.pred_boxes.tensor[0], torch.tensor([22.0, 20.0, 34.0, 28.0]))

    # Two phrases: each detection is the phrase whose tokens its query lit up.
    phrases, kept = detect(model, "circle . triangle")
    found = {phrases[c]: box for c, box in zip(kept.pred_classes.tolist(), kept.pred_boxes.tensor)}
    assert set(found) == {"circle", "triangle"}
    torch.testing.assert_close(found["circle"], torch.tensor([6.0, 6.0, 14.0, 14.0]))
    # "red circle": a phrase's score is the mean probability of its tokens, so the queries
    # lighting only "red" or only "circle" score about 1/2 each, the triangle query ~0.
    phrases, kept = detect(model, "red circle", threshold=0.1)
    assert phrases == ["red circle"] and kept.pred_classes.tolist() == [0, 0]
    torch.testing.assert_close(kept.scores, torch.full((2,), 0.5), atol=1e-3, rtol=0)
    # No prompt: the category names, pred_classes are class ids.
    phrases, kept = detect(model, None)
    assert phrases == CATEGORIES
    assert sorted(kept.pred_classes.tolist()) == [0, 2]


def test_a_batched_image_is_given_only_its_own_phrases(model, monkeypatch):
    """Batched with a 3-phrase prompt, a 1-phrase image ranked the batch's zero columns too:
    with more detections asked for than its queries x phrases, it got detections of phrase
    indices its prompt does not have."""
    monkeypatch.setattr(model, "forward_outputs", fake_outputs(model, BOXES))
    monkeypatch.setattr(model, "select_box_nums_for_evaluation", 3 * len(BOXES))
    image = {"image": torch.zeros(3, 40, 40, dtype=torch.uint8), "height": 40, "width": 40}
    batch = [dict(image, prompt="triangle"), dict(image, prompt="circle . triangle . red")]
    alone, together = model.eval()([batch[0]])[0], model([*batch])[0]
    assert together["phrases"] == ["triangle"]
    assert set(together["instances"].pred_classes.tolist()) == {0}
    assert len(together["instances"]) == len(alone["instances"]) == len(BOXES)
    torch.testing.assert_close(together["instances"].scores, alone["instances"].scores)


def test_a_prompt_repeating_a_phrase_is_an_error_at_inference(model, monkeypatch):
    """ "circle . Circle" used to return every circle twice, once per copy."""
    monkeypatch.setattr(model, "forward_outputs", fake_outputs(model, BOXES))
    with pytest.raises(ValueError, match=r"repeats phrases \[\['circle', 'Circle'\]\]"):
        detect(model, "circle . triangle . Circle")
    phrases, kept = detect(model, "circle . triangle")
    assert sorted(kept.pred_classes.tolist()) == [0, 1]
    # Training prompts are the dataset's: not refused here.
    model.train()
    assert model.prompts([{"prompt": "circle . circle"}]) == ["circle . circle"]


def test_long_prompts_are_chunked_and_merged(model, monkeypatch):
    monkeypatch.setattr(model, "forward_outputs", fake_outputs(model, BOXES))
    prompt = "square . circle . star . moon . sun . triangle . cloud . tree"
    phrases_full, kept_full = detect(model, prompt)
    monkeypatch.setattr(model.bert, "max_text_len", 8)  # [CLS] + 3 phrases + [SEP] at most
    phrases_chunked, kept_chunked = detect(model, prompt)
    assert phrases_chunked == phrases_full == [p.strip() for p in prompt.split(".")]
    assert sorted(kept_chunked.pred_classes.tolist()) == sorted(kept_full.pred_classes.tolist())
    assert {phrases_chunked[c] for c in kept_chunked.pred_classes.tolist()} == {
        "circle",
        "triangle",
    }


def test_real_network_inference_outputs(model):
    model.eval()
    inputs = [
        {"image": torch.randint(0, 255, (3, 64, 80), dtype=torch.uint8), "height": 32, "width": 40},
        {"image": torch.randint(0, 255, (3, 48, 64), dtype=torch.uint8), "prompt": "red circle"},
    ]
    outputs = model(inputs)
    assert outputs[0]["phrases"] == CATEGORIES and outputs[1]["phrases"] == ["red circle"]
    assert outputs[0]["instances"].image_size == (32, 40)
    assert len(outputs[0]["instances"]) == 12  # select_box_nums_for_evaluation
    assert set(outputs[1]["instances"].pred_classes.tolist()) == {0}
    with pytest.raises(ValueError, match="must be a str"):
        model([dict(inputs[0], prompt=["circle"])])


# ------------------------------------------------------------------ converter


def idea_key_names(model) -> dict[str, str]:
    """IDEA-Research Grounding DINO parameter names (their ``groundingdino/models``: BertModel,
    input_proj, DeformableTransformerEncoderLayer / DecoderLayer, TransformerEncoderLayer,
    BiAttentionBlock, enc_out_bbox_embed), written from their naming scheme, each with the name
    of our parameter it must become."""
    ours = model.state_dict()
    enc_layers = len(model.transformer.encoder.layers)
    dec_layers = len(model.transformer.decoder.layers)
    names: dict[str, str] = {}
    for key in ours:
        if key.startswith("bert.model."):
            names["bert." + key.removeprefix("bert.model.")] = key
        elif key.startswith(("feat_map.", "transformer.encoder.fusion_layers.")) or key.startswith(
            ("transformer.encoder.text_layers.", "transformer.decoder.ref_point_head.")
        ):
            names[key] = key
    for key in ("transformer.tgt_embed.weight", "transformer.decoder.norm.weight"):
        names[key] = key
    names["transformer.decoder.norm.bias"] = "transformer.decoder.norm.bias"
    for part in ("enc_output.weight", "enc_output.bias"):
        names["transformer." + part] = "transformer." + part
        names["transformer.enc_output_norm." + part.split(".")[1]] = (
            "transformer.enc_output_norm." + part.split(".")[1]
        )
    names["transformer.level_embed"] = "transformer.level_embeds"
    for level in range(3):
        for idea, ours_name in (("0", "conv"), ("1", "norm")):
            for p in ("weight", "bias"):
                names[f"input_proj.{level}.{idea}.{p}"] = f"neck.convs.{level}.{ours_name}.{p}"
    for idea, ours_name in (("0", "conv"), ("1", "norm")):
        for p in ("weight", "bias"):
            names[f"input_proj.3.{idea}.{p}"] = f"neck.extra_convs.0.{ours_name}.{p}"
    msda = ("sampling_offsets", "attention_weights", "value_proj", "output_proj")
    mha = ("in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias")
    for i in range(enc_layers):
        src, dst = f"transformer.encoder.layers.{i}.", f"transformer.encoder.layers.{i}."
        for m in msda:
            for p in ("weight", "bias"):
                names[f"{src}self_attn.{m}.{p}"] = f"{dst}attentions.0.{m}.{p}"
        for idea, ours_name in (
            ("norm1", "norms.0"),
            ("linear1", "ffns.0.layers.0.0"),
            ("linear2", "ffns.0.layers.1"),
            ("norm2", "norms.1"),
        ):
            for p in ("weight", "bias"):
                names[f"{src}{idea}.{p}"] = f"{dst}{ours_name}.{p}"
    for i in range(dec_layers):
        src = dst = f"transformer.decoder.layers.{i}."
        for m in msda:
            for p in ("weight", "bias"):
                names[f"{src}cross_attn.{m}.{p}"] = f"{dst}attentions.2.{m}.{p}"
        for idea, ours_name in (
            ("self_attn", "attentions.0.attn"),
            ("ca_text", "attentions.1.attn"),
        ):
            for p in mha:
                names[f"{src}{idea}.{p}"] = f"{dst}{ours_name}.{p}"
        for idea, ours_name in (
            ("norm2", "norms.0"),
            ("catext_norm", "norms.1"),
            ("norm1", "norms.2"),
            ("linear1", "ffns.0.layers.0.0"),
            ("linear2", "ffns.0.layers.1"),
            ("norm3", "norms.3"),
        ):
            for p in ("weight", "bias"):
                names[f"{src}{idea}.{p}"] = f"{dst}{ours_name}.{p}"
    for i in range(dec_layers):
        for j in range(3):
            for p in ("weight", "bias"):
                names[f"bbox_embed.{i}.layers.{j}.{p}"] = f"bbox_embed.{i}.layers.{j}.{p}"
                names[f"transformer.decoder.bbox_embed.{i}.layers.{j}.{p}"] = (
                    f"transformer.decoder.bbox_embed.{i}.layers.{j}.{p}"
                )
    for j in range(3):
        for p in ("weight", "bias"):
            names[f"transformer.enc_out_bbox_embed.layers.{j}.{p}"] = (
                f"bbox_embed.{dec_layers}.layers.{j}.{p}"
            )
    names["label_enc.weight"] = ""  # IDEA's label book: not mapped (dropped)
    names["bert.pooler.dense.weight"] = ""  # our text encoder has no pooler (dropped)
    return names


@pytest.fixture(scope="module")
def r50_model():
    torch.manual_seed(0)
    return instantiate(tiny_model_config("grounding_dino_r50_4scale_12ep.py").model)


def test_idea_checkpoint_maps_completely(r50_model):
    names = idea_key_names(r50_model)
    ours = r50_model.state_dict()
    generator = torch.Generator().manual_seed(0)
    source = {
        idea: torch.randn(ours[mine].shape, generator=generator) if mine else torch.zeros(3, 8)
        for idea, mine in names.items()
    }
    target = {k: v for k, v in ours.items() if not k.startswith("backbone.")}
    converted, report = get_converter("grounding_dino.idea").convert(source, target)
    assert report.ok, report.summary()
    assert sorted(report.dropped_source_keys) == ["bert.pooler.dense.weight", "label_enc.weight"]
    for idea, mine in names.items():
        if mine:
            torch.testing.assert_close(converted[mine], source[idea])
    # The encoder box head is also the decoder's last head (tied), converted once for both.
    torch.testing.assert_close(
        converted["transformer.decoder.bbox_embed.6.layers.0.weight"],
        source["transformer.enc_out_bbox_embed.layers.0.weight"],
    )
    # Parameter-free ContrastiveEmbed: x @ text^T, i.e. scale sqrt(256) over our / sqrt(C).
    assert float(converted["class_embed.0.logit_scale"].exp()) == pytest.approx(16.0)
    assert float(converted["class_embed.3.bias"]) == 0.0
    assert "label_enc.weight" in report.filled_target_keys
