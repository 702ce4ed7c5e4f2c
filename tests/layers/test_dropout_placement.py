"""Dropout where the original implementations put it, so that training regularizes as theirs.

facebookresearch/detr (``models/transformer.py``) drops the output of every attention before
the residual sum (``dropout1`` / ``dropout2``, besides ``nn.MultiheadAttention``'s dropout on
the attention weights), and fundamentalvision/Deformable-DETR
(``models/deformable_transformer.py``) the output of its decoder's self-attention
(``dropout2``). detrex's ``MultiheadAttention`` leaves that output dropout at 0; ours followed
detrex until a config audit found it.

Counted per layer, in one training forward of a small model, as the originals have them: the
``nn.Dropout`` modules of probability p that run (attention output, FFN hidden, FFN output;
a module that exists but is skipped does not count), and the attention-weight dropouts
(``nn.MultiheadAttention(dropout=p)``, applied inside its functional forward).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from detectron2.config import LazyConfig, instantiate
from torch import nn

from tests.projects.deformable_detr_tiny import tiny_batch, tiny_model_config

P = 0.1
DETR_SHAPES = Path(__file__).resolve().parents[2] / "projects/detr/configs/detr_shapes.py"


def _tiny_detr() -> nn.Module:
    cfg = LazyConfig.load(str(DETR_SHAPES)).model
    cfg.embed_dim = 32
    cfg.position_embedding.num_pos_feats = 16
    for part in (cfg.transformer.encoder, cfg.transformer.decoder):
        part.update(embed_dim=32, num_heads=4, feedforward_dim=64, num_layers=2)
        part.update(attn_dropout=P, ffn_dropout=P)
    cfg.num_queries = 5
    return instantiate(cfg)


def _tiny_deformable_detr() -> nn.Module:
    return instantiate(tiny_model_config(False, False, dropout=P))


def _dropouts_per_layer(model: nn.Module) -> dict[str, tuple[int, int]]:
    """``{layer: (nn.Dropout modules with p == P that ran, attention-weight dropouts)}`` for
    every encoder and decoder layer, in one training forward."""
    ran: set[str] = set()
    hooks = [
        module.register_forward_hook(lambda *_, name=name: ran.add(name))
        for name, module in model.named_modules()
        if isinstance(module, nn.Dropout) and module.p == P
    ]
    model.train()
    try:
        model(tiny_batch())
    finally:
        for hook in hooks:
            hook.remove()
    counts = {}
    for part in ("encoder", "decoder"):
        for index, layer in enumerate(getattr(model.transformer, part).layers):
            prefix = f"transformer.{part}.layers.{index}."
            outputs = sum(name.startswith(prefix) for name in ran)
            weights = sum(
                isinstance(m, nn.MultiheadAttention) and m.dropout == P for m in layer.modules()
            )
            counts[f"{part}.{index}"] = (outputs, weights)
    return counts


@pytest.mark.parametrize(
    ("build", "encoder", "decoder"),
    [
        # detr: encoder dropout (FFN), dropout1, dropout2 and self_attn(dropout=0.1); decoder
        # dropout (FFN), dropout1-3 and self_attn, multihead_attn with dropout=0.1.
        (_tiny_detr, (3, 1), (4, 2)),
        # Deformable-DETR: encoder dropout1 (after MSDeformAttn), dropout2-3 (FFN); decoder
        # dropout1 (cross), dropout2 (self), dropout3-4 (FFN) and self_attn(dropout=0.1).
        (_tiny_deformable_detr, (3, 0), (4, 1)),
    ],
    ids=["detr", "deformable_detr"],
)
def test_each_layer_drops_out_where_the_original_does(build, encoder, decoder):
    counts = _dropouts_per_layer(build())
    assert counts and all(
        count == (encoder if name.startswith("encoder") else decoder)
        for name, count in counts.items()
    ), counts
