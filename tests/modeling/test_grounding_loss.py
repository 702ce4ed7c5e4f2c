"""GroundingHungarianMatcher and GroundingCriterion: phrase costs and token focal loss against
hand computations, and the errors for targets without token maps."""

import pytest
import torch
import torch.nn.functional as F

from detr_ext.modeling import (
    GroundingCriterion,
    GroundingHungarianMatcher,
    HungarianMatcher,
)

ALPHA, GAMMA = 0.25, 2.0


def focal_cost(logit: float) -> float:
    prob = torch.sigmoid(torch.tensor(logit, dtype=torch.float64))
    positive = ALPHA * (1 - prob) ** GAMMA * -torch.log(prob + 1e-8)
    negative = (1 - ALPHA) * prob**GAMMA * -torch.log(1 - prob + 1e-8)
    return float(positive - negative)


def test_phrase_cost_is_the_mean_token_cost_of_the_phrase():
    logits = torch.tensor([[2.0, -1.0, 0.5, -3.0], [-2.0, 1.5, 1.0, 0.0]], dtype=torch.float64)
    # Target 0: phrase of tokens 1 and 2; target 1: token 0 only.
    maps = torch.tensor([[0.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    targets = [{"labels": torch.tensor([0, 1]), "boxes": torch.rand(2, 4), "positive_map": maps}]
    cost = GroundingHungarianMatcher().target_class_cost(logits, targets)
    expected = torch.tensor(
        [
            [(focal_cost(-1.0) + focal_cost(0.5)) / 2, focal_cost(2.0)],
            [(focal_cost(1.5) + focal_cost(1.0)) / 2, focal_cost(-2.0)],
        ],
        dtype=torch.float64,
    )
    torch.testing.assert_close(cost, expected)


def test_matching_follows_the_phrase_tokens_not_the_label_ids():
    # Query 0 lights up tokens 2-3 (phrase "red circle"), query 1 token 0 ("triangle").
    logits = torch.full((1, 2, 4), -6.0)
    logits[0, 0, 2:] = 6.0
    logits[0, 1, 0] = 6.0
    maps = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0]])
    boxes = torch.tensor([[0.5, 0.5, 0.2, 0.2]]).repeat(2, 1)
    targets = [{"labels": torch.tensor([0, 1]), "boxes": boxes, "positive_map": maps}]
    outputs = {"pred_logits": logits, "pred_boxes": boxes[None].clone()}
    query, target = GroundingHungarianMatcher(cost_bbox=0, cost_giou=0)(outputs, targets)[0]
    assert dict(zip(query.tolist(), target.tolist(), strict=True)) == {0: 1, 1: 0}
    # The class-id matcher would read label 1 as column 1, which no query lights up.
    assert HungarianMatcher(cost_bbox=0, cost_giou=0)(outputs, targets)[0][0].tolist() != [1, 0]


def test_matcher_rejects_softmax_costs_and_bad_maps():
    with pytest.raises(ValueError, match="focal_loss_cost"):
        GroundingHungarianMatcher(cost_class_type="ce_cost")
    outputs = {"pred_logits": torch.zeros(1, 3, 5), "pred_boxes": torch.rand(1, 3, 4)}
    target = {"labels": torch.tensor([0]), "boxes": torch.rand(1, 4)}
    with pytest.raises(ValueError, match="must contain 'positive_map'"):
        GroundingHungarianMatcher()(outputs, [target])
    target["positive_map"] = torch.zeros(1, 4)
    with pytest.raises(ValueError, match=r"expected shape \(1, 5\).*got \(1, 4\)"):
        GroundingHungarianMatcher()(outputs, [target])


def make_criterion(**kwargs):
    return GroundingCriterion(
        num_classes=1,
        matcher=GroundingHungarianMatcher(),
        weight_dict={"loss_class": 1.0, "loss_bbox": 5.0, "loss_giou": 2.0},
        **kwargs,
    )


def test_token_focal_loss_equals_a_hand_computation():
    logits = torch.tensor([[[1.0, -2.0, 0.5], [-1.0, 2.0, 3.0]]], dtype=torch.float64)
    maps = torch.tensor([[0.0, 1.0, 1.0]], dtype=torch.float64)
    targets = [{"labels": torch.tensor([0]), "boxes": torch.rand(1, 4), "positive_map": maps}]
    indices = [(torch.tensor([1]), torch.tensor([0]))]
    loss = make_criterion().loss_labels({"pred_logits": logits}, targets, indices, num_boxes=2.0)

    token_targets = torch.tensor([[[0.0, 0.0, 0.0], [0.0, 1.0, 1.0]]], dtype=torch.float64)
    prob = logits.sigmoid()
    bce = F.binary_cross_entropy_with_logits(logits, token_targets, reduction="none")
    prob_of_truth = prob * token_targets + (1 - prob) * (1 - token_targets)
    weight = ALPHA * token_targets + (1 - ALPHA) * (1 - token_targets)
    expected = (weight * bce * (1 - prob_of_truth) ** GAMMA).sum() / 2.0
    torch.testing.assert_close(loss["loss_class"], expected)


def test_masked_padding_tokens_add_no_loss():
    from detr_ext.layers import MASKED_LOGIT

    logits = torch.randn(2, 3, 4)
    maps = [torch.tensor([[1.0, 0.0, 0.0, 0.0]]), torch.tensor([[0.0, 1.0, 0.0, 0.0]])]
    targets = [
        {"labels": torch.tensor([0]), "boxes": torch.rand(1, 4), "positive_map": m} for m in maps
    ]
    indices = [(torch.tensor([0]), torch.tensor([0])), (torch.tensor([2]), torch.tensor([0]))]
    padded = torch.cat([logits, torch.full((2, 3, 5), MASKED_LOGIT)], -1)
    padded_targets = [dict(t, positive_map=F.pad(t["positive_map"], (0, 5))) for t in targets]
    criterion = make_criterion()
    plain = criterion.loss_labels({"pred_logits": logits}, targets, indices, 2.0)
    with_padding = criterion.loss_labels({"pred_logits": padded}, padded_targets, indices, 2.0)
    torch.testing.assert_close(plain["loss_class"], with_padding["loss_class"])


def test_full_criterion_runs_every_layer_and_denoising_and_needs_focal_loss():
    with pytest.raises(ValueError, match="focal_loss"):
        make_criterion(loss_class_type="ce_loss")
    torch.manual_seed(0)
    layer = {"pred_logits": torch.randn(1, 5, 6), "pred_boxes": torch.rand(1, 5, 4)}
    outputs = dict(layer, aux_outputs=[dict(layer)], enc_outputs=dict(layer))
    outputs["dn_outputs"] = dict(layer, aux_outputs=[dict(layer)])
    outputs["dn_meta"] = {"pad_size": 4, "num_dn_group": 2}
    maps = torch.zeros(2, 6)
    maps[0, 1], maps[1, 3:5] = 1, 1
    boxes = torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.7, 0.6, 0.3, 0.2]])
    targets = [{"labels": torch.tensor([0, 1]), "boxes": boxes, "positive_map": maps}]
    losses = make_criterion()(outputs, targets)
    for suffix in ("", "_0", "_enc", "_dn", "_dn_0"):
        for name in ("loss_class", "loss_bbox", "loss_giou"):
            assert torch.isfinite(losses[name + suffix]), name + suffix
