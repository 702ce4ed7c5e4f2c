"""SetCriterion: hand-computed losses, suffixes and weights, empty targets, validation."""

import math

import pytest
import torch

from detr_ext.modeling.criterions import DINOCriterion, SetCriterion
from detr_ext.modeling.matchers import HungarianMatcher

WEIGHTS = {"loss_class": 1.0, "loss_bbox": 5.0, "loss_giou": 2.0}


def fixed_matcher(indices):
    """A matcher that always returns ``indices`` (list of (queries, targets) lists)."""
    as_tensors = [
        (torch.tensor(q, dtype=torch.int64), torch.tensor(t, dtype=torch.int64)) for q, t in indices
    ]
    return lambda outputs, targets: as_tensors


def one_target_case(num_logits):
    """One image, two queries, one target matched to query 1.

    Predicted box of query 1: cxcywh (0.5, 0.5, 0.2, 0.2) = xyxy (0.4, 0.4, 0.6, 0.6); target:
    (0.55, 0.5, 0.2, 0.2) = (0.45, 0.4, 0.65, 0.6). Intersection 0.15 * 0.2 = 0.03, union
    0.05, IoU 0.6; the enclosing box (0.4, 0.4, 0.65, 0.6) has area 0.05, so GIoU = 0.6.
    """
    logits = torch.tensor(
        [[[0.5, -1.0, 2.0][:num_logits], [0.0, 1.0, -0.5][:num_logits]]], dtype=torch.float64
    )
    outputs = {
        "pred_logits": logits,
        "pred_boxes": torch.tensor(
            [[[0.2, 0.2, 0.1, 0.1], [0.5, 0.5, 0.2, 0.2]]], dtype=torch.float64
        ),
    }
    targets = [
        {
            "labels": torch.tensor([1]),
            "boxes": torch.tensor([[0.55, 0.5, 0.2, 0.2]], dtype=torch.float64),
        }
    ]
    return outputs, targets


def log_softmax(values, index):
    return values[index] - math.log(sum(math.exp(v) for v in values))


def test_ce_loss_hand_computed():
    criterion = SetCriterion(
        2, fixed_matcher([([1], [0])]), WEIGHTS, loss_class_type="ce_loss", eos_coef=0.1
    ).to(torch.float64)  # the empty_weight buffer follows the module's dtype
    outputs, targets = one_target_case(num_logits=3)
    losses = criterion(outputs, targets)
    assert set(losses) == {"loss_class", "loss_bbox", "loss_giou"}
    # Query 1 -> class 1 (weight 1), query 0 -> no-object class 2 (weight eos_coef).
    nll_matched = -log_softmax([0.0, 1.0, -0.5], 1)
    nll_background = -log_softmax([0.5, -1.0, 2.0], 2)
    eos_coef = torch.tensor(0.1, dtype=torch.float32).item()  # the buffer is built in float32
    expected_class = (1.0 * nll_matched + eos_coef * nll_background) / (1.0 + eos_coef)
    assert losses["loss_class"].item() == pytest.approx(expected_class, rel=1e-12)
    assert losses["loss_bbox"].item() == pytest.approx(5.0 * 0.05, rel=1e-9)
    assert losses["loss_giou"].item() == pytest.approx(2.0 * (1 - 0.6), rel=1e-9)


@pytest.mark.parametrize("alpha, gamma", [(0.25, 2.0), (0.5, 1.0)])  # detrex's; other values
def test_focal_loss_hand_computed(alpha, gamma):
    criterion = SetCriterion(
        2, fixed_matcher([([1], [0])]), WEIGHTS, loss_class_type="focal_loss", alpha=alpha,
        gamma=gamma,
    )  # fmt: skip
    outputs, targets = one_target_case(num_logits=2)
    losses = criterion(outputs, targets)

    def focal(logit, positive):
        p = 1 / (1 + math.exp(-logit))
        if positive:
            return alpha * (1 - p) ** gamma * -math.log(p)
        return (1 - alpha) * p**gamma * -math.log(1 - p)

    # One-hot targets: query 1 is class 1, query 0 is background (all zeros). Mean over the
    # 2 queries times Q = 2 is a plain sum; num_boxes = 1.
    expected = focal(0.5, False) + focal(-1.0, False) + focal(0.0, False) + focal(1.0, True)
    assert losses["loss_class"].item() == pytest.approx(expected, rel=1e-12)
    assert losses["loss_bbox"].item() == pytest.approx(5.0 * 0.05, rel=1e-9)


def test_num_boxes_counts_all_images():
    criterion = SetCriterion(
        2, fixed_matcher([([0], [0]), ([1, 0], [0, 1])]), WEIGHTS, losses=("boxes",)
    )
    outputs = {
        "pred_logits": torch.zeros(2, 2, 2, dtype=torch.float64),
        "pred_boxes": torch.full((2, 2, 4), 0.5, dtype=torch.float64),
    }
    targets = [
        {"labels": torch.tensor([0]), "boxes": torch.full((1, 4), 0.4, dtype=torch.float64)},
        {"labels": torch.tensor([1, 0]), "boxes": torch.full((2, 4), 0.3, dtype=torch.float64)},
    ]
    losses = criterion(outputs, targets)
    assert set(losses) == {"loss_bbox", "loss_giou"}
    # |0.5 - 0.4| * 4 + |0.5 - 0.3| * 4 * 2, over 3 boxes.
    assert losses["loss_bbox"].item() == pytest.approx(5.0 * (0.4 + 1.6) / 3, rel=1e-9)


class RecordingCriterion(SetCriterion):
    def match(self, outputs, targets, layer_index):
        self.layer_indices.append(layer_index)
        return super().match(outputs, targets, layer_index)


def test_aux_and_enc_suffixes_and_weights():
    matcher = HungarianMatcher(2.0, 5.0, 2.0)
    weights = {**WEIGHTS, "loss_bbox_0": 10.0}
    criterion = RecordingCriterion(3, matcher, weights)
    criterion.layer_indices = []
    layer = {"pred_logits": torch.randn(2, 4, 3), "pred_boxes": torch.rand(2, 4, 4) * 0.4 + 0.1}
    outputs = {**layer, "aux_outputs": [dict(layer), dict(layer)], "enc_outputs": dict(layer)}
    targets = [
        {"labels": torch.tensor([0, 2]), "boxes": torch.rand(2, 4) * 0.4 + 0.1},
        {"labels": torch.tensor([1]), "boxes": torch.rand(1, 4) * 0.4 + 0.1},
    ]
    losses = criterion(outputs, targets)
    names = ["loss_class", "loss_bbox", "loss_giou"]
    assert list(losses) == [n + s for s in ["", "_0", "_1", "_enc"] for n in names]
    assert criterion.layer_indices == [2, 0, 1, None]
    # Same predictions on every layer: equal weighted losses, except the exact-key override.
    for suffix in ["_1", "_enc"]:
        for name in names:
            torch.testing.assert_close(losses[name + suffix], losses[name])
    torch.testing.assert_close(losses["loss_bbox_0"], losses["loss_bbox"] / 5.0 * 10.0)
    assert all(v.dim() == 0 for v in losses.values())


def test_empty_targets_give_finite_losses_and_grads():
    for loss_class_type, num_logits in [("focal_loss", 3), ("ce_loss", 4)]:
        criterion = SetCriterion(3, HungarianMatcher(), WEIGHTS, loss_class_type=loss_class_type)
        logits = torch.randn(2, 4, num_logits, requires_grad=True)
        boxes = (torch.rand(2, 4, 4) * 0.4 + 0.1).requires_grad_(True)
        targets = [{"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)}] * 2
        losses = criterion({"pred_logits": logits, "pred_boxes": boxes}, targets)
        assert all(torch.isfinite(v) for v in losses.values())
        assert losses["loss_bbox"].item() == 0 and losses["loss_giou"].item() == 0
        assert losses["loss_class"].item() > 0
        sum(losses.values()).backward()
        assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_loss_weight_rule():
    weights = {**WEIGHTS, "loss_class_dn": 3.0, "loss_giou_enc": 7.0}
    criterion = SetCriterion(2, HungarianMatcher(), weights)
    assert criterion.loss_weight("loss_class_4") == 1.0
    assert criterion.loss_weight("loss_class_dn_4") == 3.0  # longest prefix wins
    assert criterion.loss_weight("loss_giou_enc") == 7.0  # exact key wins
    assert criterion.loss_weight("loss_bbox_enc") == 5.0
    with pytest.raises(ValueError, match="no weight for loss 'loss_mask'"):
        criterion.loss_weight("loss_mask")


def test_empty_weight_buffer_only_for_ce():
    ce = SetCriterion(80, HungarianMatcher(), WEIGHTS, loss_class_type="ce_loss", eos_coef=0.1)
    assert ce.state_dict()["empty_weight"].shape == (81,)
    assert ce.empty_weight[-1].item() == pytest.approx(0.1)
    assert "empty_weight" not in SetCriterion(80, HungarianMatcher(), WEIGHTS).state_dict()


def test_invalid_arguments():
    matcher = HungarianMatcher()
    with pytest.raises(ValueError, match=r"\['loss_giou'\]"):
        SetCriterion(2, matcher, {"loss_class": 1.0, "loss_bbox": 1.0})
    with pytest.raises(ValueError, match="unknown"):
        SetCriterion(2, matcher, WEIGHTS, losses=("class", "masks"))
    with pytest.raises(ValueError, match="loss_class_type"):
        SetCriterion(2, matcher, WEIGHTS, loss_class_type="bce")
    criterion = SetCriterion(2, fixed_matcher([([1], [0])]), WEIGHTS, loss_class_type="ce_loss")
    outputs, targets = one_target_case(num_logits=2)  # ce needs K + 1 = 3 logits
    with pytest.raises(ValueError, match=r"expected pred_logits \[B, Q, 3\]"):
        criterion(outputs, targets)


# Found by `make mutate` (mutmut survivors): DINOCriterion's denoising branch decisions.
def test_dino_criterion_denoising_needs_both_outputs_and_meta():
    """Without denoising (no ``dn_outputs`` or no ``dn_meta``: eval-style outputs, or zero
    denoising groups) every ``*_dn`` loss is a zero; too few denoising aux outputs for the
    matching ones is an error naming both counts."""
    criterion = DINOCriterion(3, HungarianMatcher(), WEIGHTS)
    layer = {"pred_logits": torch.randn(1, 4, 3), "pred_boxes": torch.rand(1, 4, 4) * 0.4 + 0.1}
    targets = [{"labels": torch.tensor([0]), "boxes": torch.rand(1, 4) * 0.4 + 0.1}]
    outputs = {**layer, "aux_outputs": [dict(layer)]}
    dn_layer = {"pred_logits": torch.randn(1, 2, 3), "pred_boxes": torch.rand(1, 2, 4) * 0.4 + 0.1}
    dn_meta = {"pad_size": 2, "num_dn_group": 2}
    for extra in ({"dn_outputs": dict(dn_layer)}, {"dn_meta": dn_meta}):
        losses = criterion.denoising_losses({**outputs, **extra}, targets, num_boxes=1.0)
        assert sorted(losses) == sorted(
            n + s for n in ("loss_class", "loss_bbox", "loss_giou") for s in ("_dn", "_dn_0")
        )
        assert all(float(v) == 0.0 for v in losses.values())
    with pytest.raises(
        ValueError, match=r"DINOCriterion: expected 1 denoising aux_outputs .*got 0"
    ):
        criterion.denoising_losses(
            {**outputs, "dn_outputs": dict(dn_layer), "dn_meta": dn_meta}, targets, num_boxes=1.0
        )
