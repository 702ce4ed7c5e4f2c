"""Dropout where the original implementations put it, so that training regularizes as theirs.

facebookresearch/detr (``models/transformer.py``) drops the output of every attention before
the residual sum (``dropout1`` / ``dropout2``, besides ``nn.MultiheadAttention``'s dropout on
the attention weights), and fundamentalvision/Deformable-DETR
(``models/deformable_transformer.py``) the output of its decoder's self-attention
(``dropout2``). detrex's ``MultiheadAttention`` leaves that output dropout at 0; ours followed
detrex until a config audit found it.

Counted per layer as the originals have them: ``nn.Dropout`` modules of probability p (ours:
attention output, FFN hidden, FFN output) and attention-weight dropouts.
"""

from __future__ import annotations

import pytest
from torch import nn

from detr_ext.layers import (
    DeformableDetrTransformerDecoder,
    DeformableDetrTransformerEncoder,
    DetrTransformerDecoder,
    DetrTransformerEncoder,
)

P = 0.1


def _dropouts(layer: nn.Module) -> tuple[int, int]:
    """(``nn.Dropout`` modules with p == P, ``nn.MultiheadAttention`` with dropout == P)."""
    outputs = sum(isinstance(m, nn.Dropout) and m.p == P for m in layer.modules())
    weights = sum(isinstance(m, nn.MultiheadAttention) and m.dropout == P for m in layer.modules())
    return outputs, weights


@pytest.mark.parametrize(
    ("build", "expected"),
    [
        # detr: encoder dropout (FFN), dropout1, dropout2; self_attn(dropout=0.1).
        (lambda: DetrTransformerEncoder(attn_dropout=P, ffn_dropout=P, num_layers=2), (3, 1)),
        # detr: decoder dropout (FFN), dropout1, dropout2, dropout3; self_attn and
        # multihead_attn with dropout=0.1.
        (lambda: DetrTransformerDecoder(attn_dropout=P, ffn_dropout=P, num_layers=2), (4, 2)),
        # Deformable-DETR: encoder dropout1 (after MSDeformAttn), dropout2, dropout3 (FFN).
        (
            lambda: DeformableDetrTransformerEncoder(
                attn_dropout=P, ffn_dropout=P, num_layers=2, num_feature_levels=2
            ),
            (3, 0),
        ),
        # Deformable-DETR: decoder dropout1 (cross), dropout2 (self), dropout3, dropout4 (FFN);
        # self_attn with dropout=0.1.
        (
            lambda: DeformableDetrTransformerDecoder(
                attn_dropout=P, ffn_dropout=P, num_layers=2, num_feature_levels=2
            ),
            (4, 1),
        ),
    ],
    ids=["detr_encoder", "detr_decoder", "deformable_encoder", "deformable_decoder"],
)
def test_each_layer_drops_out_where_the_original_does(build, expected):
    sequence = build()
    for layer in sequence.layers:
        assert _dropouts(layer) == expected
