"""Reference state_dict key lists (``tests/fixtures/state_dict_keys``) for converter tests:
parse them and build synthetic checkpoints with their exact names and shapes."""

from __future__ import annotations

import re
from pathlib import Path

import torch

KEYS_DIR = Path(__file__).resolve().parents[1] / "fixtures" / "state_dict_keys"
_LINE = re.compile(r"^(\S+) \(([\d, ]*)\) (\w+)$")
# detrex saves DINO's shared heads twice: as ``class_embed.*`` / ``bbox_embed.*`` and under
# ``transformer.decoder.``, with equal values.
_DECODER_HEADS = ("transformer.decoder.class_embed", "transformer.decoder.bbox_embed")


def read_key_list(file_name: str) -> dict[str, tuple[int, ...]]:
    """``key -> shape`` from a fixture listing ``key (d0, d1, ...) dtype`` per line."""
    shapes = {}
    for line in (KEYS_DIR / file_name).read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        match = _LINE.match(line)
        assert match, f"unparsable line in {file_name}: {line!r}"
        shapes[match.group(1)] = tuple(int(d) for d in match.group(2).split(",") if d.strip())
    return shapes


def synthetic_state_dict(shapes: dict[str, tuple[int, ...]], seed: int = 0) -> dict:
    """A random tensor of each shape, reproducible from ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    return {key: torch.randn(shape, generator=generator) for key, shape in shapes.items()}


def share_decoder_heads(state_dict: dict) -> dict:
    """``state_dict`` with its ``transformer.decoder.{class,bbox}_embed.*`` tensors set equal to
    the top-level heads, as in a detrex DINO checkpoint."""
    for key in state_dict:
        if key.startswith(_DECODER_HEADS):
            state_dict[key] = state_dict[key.removeprefix("transformer.decoder.")]
    return state_dict
