"""SegmCriterion: hand-computed mask losses on the sampled points, matched pairs only,
perfect vs wrong masks, empty targets, bf16 autocast, weights, aux layers, validation."""

import math

import pytest
import torch

from detr_ext.modeling.criterions import SegmCriterion
from detr_ext.modeling.matchers import HungarianMatcher

WEIGHTS = {
    "loss_class": 1.0,
    "loss_bbox": 5.0,
    "loss_giou": 2.0,
    "loss_mask": 1.0,
    "loss_dice": 1.0,
}


def fixed_matcher(indices):
    """A matcher that always returns ``indices`` (list of (queries, targets) lists)."""
    as_tensors = [
        (torch.tensor(q, dtype=torch.int64), torch.tensor(t, dtype=torch.int64)) for q, t in indices
    ]
    return lambda outputs, targets: as_tensors


def criterion_for(matcher, weights=WEIGHTS, **kwargs):
    return SegmCriterion(2, matcher, weights, loss_class_type="ce_loss", **kwargs)


def box_outputs(batch, queries, dtype=torch.float32):
    logits = torch.randn(batch, queries, 3, dtype=dtype)
    boxes = torch.tensor([0.5, 0.5, 0.3, 0.3], dtype=dtype).repeat(batch, queries, 1)
    return {"pred_logits": logits, "pred_boxes": boxes}


def rectangle_mask(height, width, top, left, bottom, right):
    mask = torch.zeros(height, width, dtype=torch.bool)
    mask[top:bottom, left:right] = True
    return mask


# --------------------------------------------------------------------- hand computation


def bilinear(grid, x, y):
    """As point_sample (align_corners=False, border): pixel centers at (j + 0.5) / W."""
    height, width = len(grid), len(grid[0])
    px = min(max(x * width - 0.5, 0.0), width - 1.0)
    py = min(max(y * height - 0.5, 0.0), height - 1.0)
    x0, y0 = int(math.floor(px)), int(math.floor(py))
    x1, y1 = min(x0 + 1, width - 1), min(y0 + 1, height - 1)
    wx, wy = px - x0, py - y0
    top = grid[y0][x0] * (1 - wx) + grid[y0][x1] * wx
    return top * (1 - wy) + (grid[y1][x0] * (1 - wx) + grid[y1][x1] * wx) * wy


def sigmoid(value):
    return 1 / (1 + math.exp(-value))


def focal(logit, target, alpha=0.25, gamma=2.0):
    p = sigmoid(logit)
    bce = -(target * math.log(p) + (1 - target) * math.log(1 - p))
    p_t = p * target + (1 - p) * (1 - target)
    return (alpha * target + (1 - alpha) * (1 - target)) * (1 - p_t) ** gamma * bce


def test_mask_losses_equal_a_hand_computation_on_the_sampled_points():
    """One image, one target matched to query 1; uniform points (importance ratio 0) drawn
    from the seeded global generator, so they are ``torch.rand(1, P, 2)``."""
    num_points = 7
    pred_masks = torch.randn(1, 2, 3, 4, dtype=torch.float64) * 3  # [B, Q, h, w]
    target_mask = rectangle_mask(12, 16, 2, 3, 9, 11)  # [H, W] = 4x the prediction's size
    outputs = {**box_outputs(1, 2, torch.float64), "pred_masks": pred_masks}
    targets = [
        {
            "labels": torch.tensor([1]),
            "boxes": torch.tensor([[0.4, 0.45, 0.5, 0.6]], dtype=torch.float64),
            "masks": target_mask[None],
        }
    ]
    weights = {**WEIGHTS, "loss_mask": 2.0, "loss_dice": 5.0}
    criterion = criterion_for(
        fixed_matcher([([1], [0])]), weights, num_points=num_points, importance_sample_ratio=0.0
    ).to(torch.float64)  # the ce_loss empty_weight buffer follows the module's dtype
    torch.manual_seed(11)
    losses = criterion(outputs, targets)
    torch.manual_seed(11)
    points = torch.rand(1, num_points, 2, dtype=torch.float64)[0].tolist()

    pred_grid = pred_masks[0, 1].tolist()
    target_grid = target_mask.double().tolist()
    logits = [bilinear(pred_grid, x, y) for x, y in points]
    truths = [bilinear(target_grid, x, y) for x, y in points]
    assert max(truths) > 0 and min(truths) < 1  # points inside and outside the target
    expected_focal = sum(focal(v, t) for v, t in zip(logits, truths, strict=True)) / num_points
    probabilities = [sigmoid(v) for v in logits]
    overlap = sum(p * t for p, t in zip(probabilities, truths, strict=True))
    expected_dice = 1 - (2 * overlap + 1) / (sum(probabilities) + sum(truths) + 1)
    # num_boxes = 1; weights 2 and 5.
    assert losses["loss_mask"].item() == pytest.approx(2.0 * expected_focal, rel=1e-9)
    assert losses["loss_dice"].item() == pytest.approx(5.0 * expected_dice, rel=1e-9)
    assert {"loss_class", "loss_bbox", "loss_giou"} < set(losses)


# --------------------------------------------------------------------- behaviour


def two_image_case(sign=1.0, num_targets=(1, 2)):
    """Image 0: one square; image 1: two rectangles. Padded frame 40 x 48 (odd crops of it
    would do too), predictions at 10 x 12; ``sign=1`` predicts every mask perfectly for the
    pairing of :data:`PAIRING`, ``sign=-1`` exactly wrongly."""
    frame, pred_size = (40, 48), (10, 12)
    rectangles = [[(4, 4, 24, 28)], [(0, 24, 20, 48), (20, 0, 40, 16)]]
    targets = []
    for image, boxes in enumerate(rectangles):
        boxes = boxes[: num_targets[image]]
        masks = [rectangle_mask(*frame, *box) for box in boxes]
        targets.append(
            {
                "labels": torch.ones(len(boxes), dtype=torch.int64),
                "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]] * len(boxes)).reshape(-1, 4),
                "masks": torch.stack(masks) if masks else torch.zeros(0, *frame, dtype=torch.bool),
            }
        )
    pred_masks = torch.full((2, 3, *pred_size), -20.0)
    for image, queries in enumerate(PAIRING):
        for query, target_index in zip(*queries, strict=True):
            if target_index < len(targets[image]["labels"]):
                top, left, bottom, right = (v // 4 for v in rectangles[image][target_index])
                pred_masks[image, query, top:bottom, left:right] = 20.0
    pred_masks = sign * pred_masks
    outputs = {**box_outputs(2, 3), "pred_masks": pred_masks.requires_grad_(True)}
    return outputs, targets


PAIRING = [([2], [0]), ([0, 1], [1, 0])]  # image 1: query 0 <-> target 1, query 1 <-> target 0


@pytest.mark.parametrize("importance_sample_ratio", [0.0, 0.75])
def test_perfect_masks_give_small_losses_and_wrong_ones_large(importance_sample_ratio):
    criterion = criterion_for(
        fixed_matcher(PAIRING), num_points=500, importance_sample_ratio=importance_sample_ratio
    )
    perfect = criterion(*two_image_case(sign=1.0))
    wrong = criterion(*two_image_case(sign=-1.0))
    # Bilinear blending at the edges (10 x 12 vs 40 x 48) keeps the perfect losses above 0.
    # Measured: dice 0.017-0.021 / 0.04-0.056, focal 0.0012-0.0016 / 0.0045-0.0071.
    small = 0.05 if importance_sample_ratio == 0 else 0.12
    assert perfect["loss_dice"] < small and perfect["loss_mask"] < small / 5
    assert wrong["loss_dice"] > 0.9 and wrong["loss_mask"] > 2.0
    # The pairing matters: the same masks matched the other way round in image 1 are wrong.
    swapped = criterion_for(
        fixed_matcher([([2], [0]), ([0, 1], [0, 1])]), num_points=500,
        importance_sample_ratio=importance_sample_ratio,
    )(*two_image_case(sign=1.0))  # fmt: skip
    assert swapped["loss_dice"] > 0.5


def test_only_matched_queries_get_mask_gradients():
    matcher = HungarianMatcher(
        cost_class=1.0, cost_bbox=5.0, cost_giou=2.0, cost_class_type="ce_cost"
    )
    outputs, targets = two_image_case()
    # Make the Hungarian matcher pick query 2 for image 0's target.
    outputs["pred_boxes"][0, 2] = targets[0]["boxes"][0]
    outputs["pred_boxes"][0, :2] = torch.tensor([0.1, 0.1, 0.05, 0.05])
    losses = criterion_for(matcher, num_points=50)(outputs, targets)
    (losses["loss_mask"] + losses["loss_dice"]).backward()
    grad = outputs["pred_masks"].grad.abs().sum(dim=(2, 3))  # [B, Q]
    assert grad[0, 2] > 0 and grad[0, 0] == 0 and grad[0, 1] == 0
    assert (grad[1] > 0).sum() == 2  # image 1: two targets, two matched queries


@pytest.mark.parametrize("num_targets", [(0, 0), (0, 1)], ids=["empty-batch", "one-empty"])
def test_images_without_objects(num_targets):
    outputs, targets = two_image_case(num_targets=num_targets)
    criterion = criterion_for(
        HungarianMatcher(cost_bbox=5.0, cost_class_type="ce_cost"), num_points=20
    )
    losses = criterion(outputs, targets)
    assert all(torch.isfinite(value) for value in losses.values())
    if num_targets == (0, 0):
        assert losses["loss_mask"].item() == 0.0 and losses["loss_dice"].item() == 0.0
    else:
        assert losses["loss_dice"].item() > 0.0
    # The mask head stays in the graph (DDP expects its parameters used on every worker).
    assert losses["loss_mask"].requires_grad and losses["loss_dice"].requires_grad
    (losses["loss_mask"] + losses["loss_dice"]).backward()
    assert outputs["pred_masks"].grad is not None
    assert outputs["pred_masks"].grad[0].abs().sum() == 0  # image 0 has no objects


def test_a_batch_without_objects_logs_positive_zeros():
    """Mask logits summing to a negative number gave ``loss_mask: -0.0`` in the log."""
    outputs, targets = two_image_case(num_targets=(0, 0))
    outputs["pred_masks"] = outputs["pred_masks"].detach() - 5.0
    criterion = criterion_for(
        HungarianMatcher(cost_bbox=5.0, cost_class_type="ce_cost"), num_points=20
    )
    losses = criterion(outputs, targets)
    for name in ("loss_mask", "loss_dice"):
        assert math.copysign(1.0, losses[name].item()) == 1.0, (name, losses[name])


def test_bf16_inputs_under_autocast_give_float32_losses():
    outputs, targets = two_image_case()
    leaf = outputs["pred_masks"].detach().to(torch.bfloat16).requires_grad_(True)
    outputs = {key: value.to(torch.bfloat16) for key, value in outputs.items()}
    outputs["pred_masks"] = leaf
    criterion = criterion_for(fixed_matcher(PAIRING), num_points=100)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = criterion(outputs, targets)
    assert all(value.dtype == torch.float32 for value in losses.values())
    assert all(torch.isfinite(value) for value in losses.values())
    (losses["loss_mask"] + losses["loss_dice"]).backward()
    assert leaf.grad is not None and leaf.grad.dtype == torch.bfloat16


def test_weight_dict_scales_the_mask_losses():
    outputs, targets = two_image_case(sign=-1.0)
    weights = {**WEIGHTS, "loss_mask": 3.0, "loss_dice": 0.5}
    torch.manual_seed(5)
    plain = criterion_for(fixed_matcher(PAIRING), num_points=40)(outputs, targets)
    torch.manual_seed(5)
    weighted = criterion_for(fixed_matcher(PAIRING), weights, num_points=40)(outputs, targets)
    assert weighted["loss_mask"].item() == pytest.approx(3.0 * plain["loss_mask"].item())
    assert weighted["loss_dice"].item() == pytest.approx(0.5 * plain["loss_dice"].item())
    assert weighted["loss_bbox"].item() == pytest.approx(plain["loss_bbox"].item())


def test_aux_layers_and_encoder_without_pred_masks():
    outputs, targets = two_image_case()
    outputs["aux_outputs"] = [box_outputs(2, 3), box_outputs(2, 3)]
    outputs["enc_outputs"] = box_outputs(2, 3)
    losses = criterion_for(fixed_matcher(PAIRING), num_points=20)(outputs, targets)
    assert {"loss_mask", "loss_dice", "loss_class_1", "loss_bbox_0", "loss_giou_enc"} <= set(losses)
    assert not any(key.startswith(("loss_mask_", "loss_dice_")) for key in losses)


def test_without_the_masks_loss_no_masks_are_needed():
    outputs = box_outputs(1, 2)
    targets = [{"labels": torch.tensor([0]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]])}]
    criterion = criterion_for(fixed_matcher([([0], [0])]), losses=("class", "boxes"))
    assert set(criterion(outputs, targets)) == {"loss_class", "loss_bbox", "loss_giou"}


def test_validation():
    with pytest.raises(ValueError, match=r"weight for \['loss_mask', 'loss_dice'\]"):
        SegmCriterion(2, fixed_matcher([]), {"loss_class": 1, "loss_bbox": 1, "loss_giou": 1})
    with pytest.raises(ValueError, match="num_points >= 1"):
        criterion_for(fixed_matcher([]), num_points=0)
    with pytest.raises(ValueError, match="oversample_ratio >= 1"):
        criterion_for(fixed_matcher([]), oversample_ratio=0.5)
    with pytest.raises(ValueError, match=r"importance_sample_ratio in \[0, 1\]"):
        criterion_for(fixed_matcher([]), importance_sample_ratio=-0.1)

    criterion = criterion_for(fixed_matcher(PAIRING), num_points=20)
    outputs, targets = two_image_case()
    with pytest.raises(ValueError, match=r"needs outputs\['pred_masks'\]"):
        criterion({k: v for k, v in outputs.items() if k != "pred_masks"}, targets)
    with pytest.raises(ValueError, match=r"pred_masks of shape \[B, Q, h, w\] with \[B, Q\]"):
        criterion({**outputs, "pred_masks": outputs["pred_masks"][:, :2]}, targets)
    no_masks = [{k: v for k, v in t.items() if k != "masks"} for t in targets]
    with pytest.raises(ValueError, match=r"needs targets\[0\]\['masks'\]"):
        criterion(outputs, no_masks)
    wrong_count = [targets[0], {**targets[1], "masks": targets[1]["masks"][:1]}]
    with pytest.raises(ValueError, match=r"targets\[1\]\['masks'\] of shape \[n_i=2, H, W\]"):
        criterion(outputs, wrong_count)
    other_frame = [targets[0], {**targets[1], "masks": targets[1]["masks"][:, :30]}]
    with pytest.raises(ValueError, match="one padded batch frame"):
        criterion(outputs, other_frame)
