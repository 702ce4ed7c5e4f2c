"""Fixtures of the language tests: the packaged MiniLM tokenizer, a guard against network use,
and a tiny CLIP text model (tokenizer + weights) written to a temporary folder."""

from __future__ import annotations

import socket
import string
from pathlib import Path

import pytest

from detr_ext.modeling.language import default_text_encoder_path

CLIP_WORDS = ("red", "circle", "square", "blue")


@pytest.fixture(scope="session")
def minilm_path() -> str:
    return default_text_encoder_path()


@pytest.fixture(scope="session")
def minilm_tokenizer(minilm_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_path, local_files_only=True)


@pytest.fixture
def no_network(monkeypatch):
    """Offline environment variables, and any socket connection fails the test."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")

    def refuse(self, address, *args, **kwargs):
        raise AssertionError(f"network access attempted: {address!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)


def _tiny_clip_vocab() -> tuple[dict[str, int], list[tuple[str, str]]]:
    # Byte-level BPE as CLIP's: single letters, letters that end a word ("</w>"), and merges
    # that build a few whole words; any other word is spelled letter by letter.
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for char in string.ascii_lowercase + ".":
        vocab.setdefault(char, len(vocab))
        vocab.setdefault(char + "</w>", len(vocab))
    merges: list[tuple[str, str]] = []
    for word in CLIP_WORDS:
        current = word[0]
        for index, char in enumerate(word[1:], start=1):
            piece = char + "</w>" if index == len(word) - 1 else char
            merges.append((current, piece))
            current += piece
            vocab.setdefault(current, len(vocab))
    return vocab, merges


@pytest.fixture(scope="session")
def tiny_clip_path(tmp_path_factory) -> Path:
    """A folder with a CLIP tokenizer (tokenizer.json) and a 1-layer, 32-wide CLIPTextModel
    whose position embeddings allow 16 tokens."""
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    folder = tmp_path_factory.mktemp("tiny_clip")
    vocab, merges = _tiny_clip_vocab()
    CLIPTokenizer(vocab=vocab, merges=merges).save_pretrained(folder)
    config = CLIPTextConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=16,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    torch.manual_seed(0)
    CLIPTextModel(config).save_pretrained(folder)
    return folder
