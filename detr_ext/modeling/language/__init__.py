"""Language side of grounding detectors: prompts, positive maps, chunking and the text encoder.

``parse_prompt`` / ``build_prompt`` / ``split_phrases_into_chunks`` /
``sample_category_phrases`` / ``positive_map_from_spans`` need only torch; ``TextEncoder``
imports transformers when it is built.
"""

from .positive_map import phrase_token_weights, positive_map_from_spans
from .prompts import (
    PHRASE_SEPARATOR,
    build_prompt,
    category_prompt,
    num_prompt_tokens,
    parse_prompt,
    phrase_key,
    repeated_phrases,
    split_phrases_into_chunks,
)
from .sampling import sample_category_phrases, sample_training_prompts
from .text_encoder import TEXT_MODEL_TYPES, TextEncoder, default_text_encoder_path
from .tokenization import TokenizedPrompts, tokenize_prompts

__all__ = [
    "PHRASE_SEPARATOR",
    "TEXT_MODEL_TYPES",
    "TextEncoder",
    "TokenizedPrompts",
    "build_prompt",
    "category_prompt",
    "default_text_encoder_path",
    "num_prompt_tokens",
    "parse_prompt",
    "phrase_key",
    "phrase_token_weights",
    "positive_map_from_spans",
    "repeated_phrases",
    "sample_category_phrases",
    "sample_training_prompts",
    "split_phrases_into_chunks",
    "tokenize_prompts",
]
