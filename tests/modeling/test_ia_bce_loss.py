"""IA-BCE loss: quality target, local ranks, prime-sample weights, and the loss value and
gradient on tiny cases computed by hand (float64)."""

import math

import pytest
import torch

from detr_ext.modeling.losses import (
    alignment_quality,
    ia_bce_loss,
    local_rank,
    prime_sample_weights,
)


def sigmoid(x):
    return 1 / (1 + math.exp(-x))


def test_alignment_quality_values_and_clamp():
    scores = torch.tensor([0.5, 0.81, 1e-4], dtype=torch.float64, requires_grad=True)
    ious = torch.tensor([1.0, 0.0625, 1e-4], dtype=torch.float64)
    quality = alignment_quality(scores, ious, alpha=0.25)
    # 0.5 ** 0.25; 0.81 ** 0.25 * 0.0625 ** 0.75 = 0.9487 * 0.125; 1e-4 -> clamped to 0.01.
    expected = [0.5**0.25, 0.81**0.25 * 0.125, 0.01]
    torch.testing.assert_close(quality, torch.tensor(expected, dtype=torch.float64))
    assert not quality.requires_grad


def test_local_rank_by_target_and_ties():
    quality = torch.tensor([0.2, 0.9, 0.5, 0.5, 0.7, 0.1])
    groups = torch.tensor([0, 0, 1, 1, 1, 2])
    # Target 0: 0.9 first; target 1: 0.7, then the tie 0.5 / 0.5 in listing order.
    assert local_rank(quality, groups).tolist() == [1, 0, 1, 2, 0, 0]
    assert local_rank(torch.zeros(0), torch.zeros(0, dtype=torch.int64)).tolist() == []


def test_prime_sample_weights():
    torch.testing.assert_close(
        prime_sample_weights(2, 1.5), torch.tensor([1.0, math.exp(-1 / 1.5)])
    )
    assert math.exp(-1 / 1.5) == pytest.approx(0.513417, abs=1e-6)
    torch.testing.assert_close(prime_sample_weights(1, 1.5, length=2), torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(
        prime_sample_weights(3, 2.0), torch.tensor([1.0, math.exp(-0.5), math.exp(-1.0)])
    )
    with pytest.raises(ValueError, match="tau"):
        prime_sample_weights(2, 0.0)
    # A temperature below 1 is valid (sharper weights); found by `make mutate` ("tau > 1").
    torch.testing.assert_close(prime_sample_weights(2, 0.5), torch.tensor([1.0, math.exp(-2.0)]))
    with pytest.raises(ValueError, match="length"):
        prime_sample_weights(3, 1.5, length=2)


def test_logit_zero_case():
    """p = 0.5 everywhere: a positive costs ln 2 whatever its target t, a negative
    0.5 ** 2 * ln 2."""
    logits = torch.zeros(1, 2, 2, dtype=torch.float64)
    loss, weights = ia_bce_loss(
        logits,
        torch.tensor([0]),
        torch.tensor([1]),
        torch.tensor([0]),
        torch.tensor([0.3], dtype=torch.float64),
        num_boxes=2.0,
    )
    expected = (math.log(2) + 3 * 0.25 * math.log(2)) / 2.0
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    assert weights.tolist() == [1.0]


def hand_loss(logit_table, positives, num_boxes, gamma=2.0):
    """Element-wise formula written out; ``positives`` maps (b, q, c) -> target t'."""
    total = 0.0
    for b, rows in enumerate(logit_table):
        for q, row in enumerate(rows):
            for c, logit in enumerate(row):
                p = sigmoid(logit)
                if (b, q, c) in positives:
                    t = positives[(b, q, c)]
                    total += -t * math.log(p) - (1 - t) * math.log(1 - p)
                else:
                    total += -(p**gamma) * math.log(1 - p)
    return total / num_boxes


def test_two_matches_of_one_target_with_rank_weights():
    """Image 0: target 0 (class 1) matched by queries 0 and 2, target 1 (class 0) by query 1;
    image 1: its target 0 (class 2) by query 0. k = 2, tau = 1.5, alpha = 0.25, gamma = 2."""
    logit_table = [
        [[-1.0, 0.5, -2.0], [1.2, -0.3, 0.0], [0.1, 2.0, -1.5]],
        [[-0.7, 0.4, 0.9], [-2.5, 0.3, -0.2], [0.0, -1.0, 1.1]],
    ]
    logits = torch.tensor(logit_table, dtype=torch.float64, requires_grad=True)
    batch_index = torch.tensor([0, 0, 0, 1])
    query_index = torch.tensor([0, 1, 2, 0])
    labels = torch.tensor([1, 0, 1, 2])
    ious = torch.tensor([0.6, 0.7, 0.55, 0.02], dtype=torch.float64)
    groups = torch.tensor([0, 1, 0, 2])  # image 1's target 0 gets id 2 (after 2 targets)
    table = torch.tensor([1.0, math.exp(-1 / 1.5)], dtype=torch.float64)  # k = 2, tau = 1.5

    loss, weights = ia_bce_loss(
        logits, batch_index, query_index, labels, ious, 3.0, 0.25, 2.0, groups, table
    )

    # t = p ** 0.25 * iou ** 0.75 (clamped at 0.01).
    quality = [
        max(sigmoid(logit_table[b][q][c]) ** 0.25 * iou**0.75, 0.01)
        for b, q, c, iou in zip([0, 0, 0, 1], [0, 1, 2, 0], [1, 0, 1, 2], ious.tolist())
    ]
    # Query 2 (p = 0.881, IoU 0.55) beats query 0 (p = 0.622, IoU 0.6) for target 0.
    assert quality[2] > quality[0]
    w1 = math.exp(-1 / 1.5)
    assert weights.tolist() == pytest.approx([w1, 1.0, 1.0, 1.0])
    positives = {
        (0, 0, 1): quality[0] * w1,
        (0, 1, 0): quality[1],
        (0, 2, 1): quality[2],
        (1, 0, 2): quality[3],
    }
    assert loss.item() == pytest.approx(hand_loss(logit_table, positives, 3.0), rel=1e-12)

    # The target is detached: d loss / d logit = (p - t') / num_boxes at a positive.
    loss.backward()
    for (b, q, c), target in positives.items():
        expected = (sigmoid(logit_table[b][q][c]) - target) / 3.0
        assert logits.grad[b, q, c].item() == pytest.approx(expected, rel=1e-10)
    # At a negative: d/dx [-p^2 log(1 - p)] = p^2 (2 (1 - p) (-log(1 - p)) + p).
    p = sigmoid(logit_table[1][2][2])
    expected = p**2 * (2 * (1 - p) * -math.log(1 - p) + p) / 3.0
    assert logits.grad[1, 2, 2].item() == pytest.approx(expected, rel=1e-10)

    # Without rank weights every match keeps its full target.
    loss_one_to_one, ones = ia_bce_loss(
        logits.detach(), batch_index, query_index, labels, ious, 3.0, 0.25, 2.0
    )
    positives[(0, 0, 1)] = quality[0]
    assert ones.tolist() == [1.0] * 4
    assert loss_one_to_one.item() == pytest.approx(
        hand_loss(logit_table, positives, 3.0), rel=1e-12
    )


def test_no_matches_and_saturated_logits():
    logits = torch.tensor([[[-40.0, 40.0]]], dtype=torch.float64)
    empty = torch.zeros(0, dtype=torch.int64)
    loss, weights = ia_bce_loss(
        logits, empty, empty, empty, torch.zeros(0, dtype=torch.float64), 1.0,
        groups=empty, rank_weights=torch.tensor([1.0, 0.5]),
    )  # fmt: skip
    # Only negatives: p ** 2 * -log(1 - p); the saturated one is 40 (log(1 - p) = -40).
    assert torch.isfinite(loss) and loss.item() == pytest.approx(40.0, rel=1e-9)
    assert weights.shape == (0,)


def test_input_errors():
    logits = torch.zeros(1, 2, 2)
    index = torch.tensor([0])
    with pytest.raises(ValueError, match="logits"):
        ia_bce_loss(torch.zeros(2, 2), index, index, index, torch.ones(1), 1.0)
    with pytest.raises(ValueError, match="ious"):
        ia_bce_loss(logits, index, index, index, torch.ones(2), 1.0)
    with pytest.raises(ValueError, match="together"):
        ia_bce_loss(logits, index, index, index, torch.ones(1), 1.0, groups=index)
    two = torch.tensor([0, 0])
    with pytest.raises(ValueError, match="rank_weights has only 1"):
        ia_bce_loss(
            logits, two, torch.tensor([0, 1]), two, torch.ones(2), 1.0,
            groups=two, rank_weights=torch.ones(1),
        )  # fmt: skip


def test_half_precision_logits_are_computed_in_float32():
    """float16 logits (as under autocast), some saturated at +-20, with rank weights: the
    loss is the float32 loss of the same values, and the gradient reaches the logits."""
    generator = torch.Generator().manual_seed(0)
    logits = (torch.randn(2, 6, 3, generator=generator) * 4).half()
    logits[0, 0] = 20.0
    logits[1, 1] = -20.0
    batch_index = torch.tensor([0, 0, 1, 1])
    query_index = torch.tensor([0, 3, 1, 2])
    labels = torch.tensor([2, 2, 0, 1])
    ious = torch.tensor([0.8, 0.4, 0.6, 0.9]).half()
    groups = torch.tensor([0, 0, 1, 2])
    rank_weights = torch.tensor([1.0, 0.5])
    args = (batch_index, query_index, labels)
    logits.requires_grad_(True)
    loss, weights = ia_bce_loss(logits, *args, ious, 2.0, groups=groups, rank_weights=rank_weights)
    expected, expected_weights = ia_bce_loss(
        logits.detach().float(), *args, ious.float(), 2.0, groups=groups, rank_weights=rank_weights
    )
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=0)
    torch.testing.assert_close(weights, expected_weights)
    loss.backward()
    assert logits.grad.dtype == torch.float16 and torch.isfinite(logits.grad).all()
    assert logits.grad.abs().sum() > 0


# Found by `make mutate` (mutmut survivors).
def test_default_alpha_is_a_quarter():
    scores = torch.tensor([0.5, 0.9], dtype=torch.float64)
    ious = torch.tensor([0.8, 0.3], dtype=torch.float64)
    expected = scores**0.25 * ious**0.75
    torch.testing.assert_close(alignment_quality(scores, ious), expected)
    # ia_bce_loss passes its default alpha (0.25) through: same loss as with alpha=0.25 given.
    logits = torch.randn(1, 3, 2, dtype=torch.float64)
    index, query = torch.tensor([0, 0]), torch.tensor([0, 2])
    default, _ = ia_bce_loss(logits, index, query, torch.tensor([1, 0]), ious, 1.0)
    explicit, _ = ia_bce_loss(logits, index, query, torch.tensor([1, 0]), ious, 1.0, alpha=0.25)
    other, _ = ia_bce_loss(logits, index, query, torch.tensor([1, 0]), ious, 1.0, alpha=0.75)
    assert default.item() == explicit.item() != other.item()


def test_shape_errors_name_function_and_argument():
    with pytest.raises(ValueError, match=r"^alignment_quality: expected scores and ious .*\[M\]"):
        alignment_quality(torch.zeros(2, 2), torch.zeros(2, 2))  # same shape, not [M]
    with pytest.raises(ValueError, match=r"got \(3,\) and \(2,\)"):
        alignment_quality(torch.zeros(3), torch.zeros(2))
    with pytest.raises(ValueError, match=r"^local_rank: expected quality and groups .*\[M\]"):
        local_rank(torch.zeros(2, 2), torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"got \(3,\) and \(2,\)"):
        local_rank(torch.zeros(3), torch.zeros(2, dtype=torch.long))
    logits, one, two = torch.zeros(1, 2, 2), torch.tensor([0]), torch.tensor([0, 0])
    for name, args in [
        ("query_index", (one, two, one, torch.ones(1))),
        ("labels", (one, one, two, torch.ones(1))),
        ("ious", (one, one, one, torch.ones(2))),
    ]:
        with pytest.raises(ValueError, match=f"^ia_bce_loss: expected {name} of shape"):
            ia_bce_loss(logits, *args, 1.0)
    with pytest.raises(ValueError, match="^ia_bce_loss: pass groups and rank_weights together"):
        ia_bce_loss(logits, one, one, one, torch.ones(1), 1.0, rank_weights=torch.ones(1))
    with pytest.raises(ValueError, match="a target has 2 matches but rank_weights has only 1"):
        ia_bce_loss(
            logits, two, torch.tensor([0, 1]), two, torch.ones(2), 1.0,
            groups=two, rank_weights=torch.ones(1),
        )  # fmt: skip
