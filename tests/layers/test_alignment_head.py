"""detr_ext.layers.alignment_head: region-token alignment logits (GLIP / CLIP style)."""

import math

import pytest
import torch

from detr_ext.layers import MASKED_LOGIT, TokenAlignmentHead

# Two queries and three tokens in 4 channels; the last token is padding.
QUERIES = torch.tensor([[[1.0, 0.0, 0.0, 0.0], [0.0, 2.0, 0.0, 0.0]]])
TEXT = torch.tensor([[[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 3.0, 0.0], [5.0, 5.0, 5.0, 5.0]]])
PADDING = torch.tensor([[False, False, True]])


def _head(normalize, scale, bias):
    head = TokenAlignmentHead(4, normalize=normalize)
    with torch.no_grad():
        head.logit_scale.fill_(math.log(scale))
        head.bias.fill_(bias)
    return head


def test_dot_product_logits_equal_a_hand_computation():
    logits = _head(normalize=False, scale=2.0, bias=0.5)(QUERIES, TEXT, PADDING)
    # scale * <q, t> / sqrt(4) + bias: <q0, t0> = 1, <q1, t0> = 2, <q, t1> = 0.
    expected = torch.tensor([[[1.5, 0.5, MASKED_LOGIT], [2.5, 0.5, MASKED_LOGIT]]])
    torch.testing.assert_close(logits, expected)
    assert logits.shape == (1, 2, 3) and logits.dtype == torch.float32


def test_cosine_logits_equal_a_hand_computation():
    logits = _head(normalize=True, scale=10.0, bias=-1.0)(QUERIES, TEXT, PADDING)
    # cos(q0, t0) = cos(q1, t0) = 1 / sqrt(2); both queries are orthogonal to t1.
    cosine = 10.0 / math.sqrt(2.0) - 1.0
    expected = torch.tensor([[[cosine, -1.0, MASKED_LOGIT], [cosine, -1.0, MASKED_LOGIT]]])
    torch.testing.assert_close(logits, expected)
    # CLIP's cap: the cosine scale never exceeds 100.
    capped = _head(normalize=True, scale=1e4, bias=0.0)(QUERIES, TEXT, PADDING)
    torch.testing.assert_close(capped[0, 0, 0], torch.tensor(100.0 / math.sqrt(2.0)))


def test_initialisation_is_the_focal_prior():
    head = TokenAlignmentHead(8, prior_prob=0.01, init_scale=3.0)
    assert head.bias.item() == pytest.approx(-math.log(99.0))
    assert head.logit_scale.exp().item() == pytest.approx(3.0)
    zero_queries = torch.zeros(2, 5, 8)
    probabilities = head(zero_queries, torch.randn(2, 4, 8)).sigmoid()
    torch.testing.assert_close(probabilities, torch.full((2, 5, 4), 0.01))


def test_padded_tokens_are_masked_and_independent_of_their_features():
    head = _head(normalize=False, scale=1.0, bias=0.0)
    queries = torch.randn(2, 3, 4, requires_grad=True)
    text = torch.randn(2, 5, 4)
    padding = torch.zeros(2, 5, dtype=torch.bool)
    padding[1, 2:] = True
    padding[0, :] = True  # an empty prompt
    logits = head(queries, text, padding)
    assert (logits[padding[:, None, :].expand_as(logits)] == MASKED_LOGIT).all()
    assert (logits[1, :, :2] != MASKED_LOGIT).all()
    assert torch.sigmoid(torch.tensor(MASKED_LOGIT)).item() == 0.0
    logits.sum().backward()
    assert (queries.grad[0] == 0).all() and queries.grad[1].abs().sum() > 0


def test_scale_and_bias_are_learnable():
    head = TokenAlignmentHead(4)
    head(torch.randn(1, 2, 4), torch.randn(1, 3, 4)).sum().backward()
    assert head.logit_scale.grad is not None and head.logit_scale.grad != 0
    assert head.bias.grad.item() == pytest.approx(6.0)  # d(sum)/d(bias) = Q * T


@pytest.mark.parametrize("normalize", [False, True])
def test_bf16_autocast_gives_float32_logits(normalize):
    head = _head(normalize=normalize, scale=5.0, bias=-2.0)
    queries = (torch.randn(2, 6, 4) * 50).bfloat16()
    text = (torch.randn(2, 3, 4) * 50).bfloat16()
    padding = torch.tensor([[False, False, False], [True, True, True]])
    # The bf16 inputs are exact in float32: a float32 computation reproduces them closely,
    # a bf16 one (8-bit mantissa) would be off by about 1 % of the logits' range.
    reference = head(queries.float(), text.float(), padding)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = head(queries, text, padding)
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()
    torch.testing.assert_close(logits, reference)


def test_bad_inputs_raise_clear_errors():
    head = TokenAlignmentHead(4)
    with pytest.raises(ValueError, match="text with 4 channels"):
        head(QUERIES, TEXT[..., :3])
    with pytest.raises(ValueError, match="same batch size"):
        head(QUERIES.expand(2, -1, -1), TEXT)
    with pytest.raises(ValueError, match="text_padding_mask"):
        head(QUERIES, TEXT, PADDING[:, :2])
    with pytest.raises(ValueError, match="text_padding_mask"):
        head(QUERIES, TEXT, PADDING.float())
    with pytest.raises(ValueError, match="prior_prob"):
        TokenAlignmentHead(4, prior_prob=1.0)
    with pytest.raises(ValueError, match="init_scale"):
        TokenAlignmentHead(4, init_scale=0.0)
