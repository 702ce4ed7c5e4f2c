"""phrase_token_weights: each phrase's row averages over its own tokens."""

from __future__ import annotations

import pytest
import torch

from detr_ext.modeling.language import phrase_token_weights


def test_rows_average_over_each_phrase_tokens_and_an_empty_phrase_stays_zero():
    maps = torch.tensor(
        [
            [1.0, 1.0, 0.0, 0.0, 0.0],  # "red circle": tokens 0-1
            [0.0, 0.0, 1.0, 0.0, 0.0],  # "square": token 2
            [0.0, 0.0, 0.0, 0.0, 0.0],  # a phrase truncated away: no tokens
        ]
    )
    weights = phrase_token_weights(maps)
    expected = torch.tensor(
        [[0.5, 0.5, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0, 0.0]]
    )
    torch.testing.assert_close(weights, expected)
    token_probabilities = torch.tensor([0.2, 0.6, 0.9, 0.1, 0.3])
    torch.testing.assert_close(weights @ token_probabilities, torch.tensor([0.4, 0.9, 0.0]))
    bool_maps = phrase_token_weights(maps.bool().float())
    torch.testing.assert_close(bool_maps, expected)


def test_rejects_maps_that_are_not_two_dimensional():
    with pytest.raises(ValueError, match=r"expected positive maps \[K, T\], got \(5,\)"):
        phrase_token_weights(torch.ones(5))
