"""Point-sampled mask losses: point_sample against hand bilinear interpolation, uncertainty
sampling on a sharp edge, dice and focal losses against plain-python computations."""

import math

import pytest
import torch

from detr_ext.modeling.losses import (
    dice_loss,
    point_sample,
    sample_points_by_uncertainty,
    sigmoid_focal_mask_loss,
)


def bilinear(grid, x, y):
    """Value of ``grid`` (rows of numbers) at normalized ``(x, y)``: pixel ``(i, j)`` centered
    at ``((j + 0.5) / W, (i + 0.5) / H)``, coordinates clamped to the edge pixels' centers."""
    height, width = len(grid), len(grid[0])
    px = min(max(x * width - 0.5, 0.0), width - 1.0)
    py = min(max(y * height - 0.5, 0.0), height - 1.0)
    x0, y0 = int(math.floor(px)), int(math.floor(py))
    x1, y1 = min(x0 + 1, width - 1), min(y0 + 1, height - 1)
    wx, wy = px - x0, py - y0
    top = grid[y0][x0] * (1 - wx) + grid[y0][x1] * wx
    bottom = grid[y1][x0] * (1 - wx) + grid[y1][x1] * wx
    return top * (1 - wy) + bottom * wy


def sigmoid(value):
    return 1 / (1 + math.exp(-value))


def focal(logit, target, alpha=0.25, gamma=2.0):
    p = sigmoid(logit)
    bce = -(target * math.log(p) + (1 - target) * math.log(1 - p))
    p_t = p * target + (1 - p) * (1 - target)
    return (alpha * target + (1 - alpha) * (1 - target)) * (1 - p_t) ** gamma * bce


GRID = [[1.0, 2.0, 4.0, 8.0], [16.0, 32.0, 64.0, 128.0], [256.0, 512.0, 1024.0, 2048.0]]


# --------------------------------------------------------------------- point_sample


def test_point_sample_written_out_values():
    maps = torch.tensor([GRID], dtype=torch.float64)[None]  # [1, 1, 3, 4]
    coords = torch.tensor([[[0.0, 0.0], [1.0, 1.0], [0.5, 0.5], [0.25, 0.5], [0.375, 0.5]]])
    values = point_sample(maps, coords.double())[0, 0].tolist()
    # Corners clamp to the corner pixels; (0.5, 0.5) is pixel (1, 1.5); (0.25, 0.5) is
    # halfway between the centers of pixels (1, 0) and (1, 1); (0.375, 0.5) is the center of
    # pixel (1, 1).
    assert values == pytest.approx([1.0, 2048.0, 48.0, 24.0, 32.0])


def test_point_sample_matches_hand_bilinear_at_many_points():
    maps = torch.tensor([GRID, [[-v for v in row] for row in GRID]], dtype=torch.float64)
    maps = torch.stack([maps, maps.flip(-1)])  # [N=2, C=2, 3, 4]
    points = [(0.0, 0.0), (1.0, 0.0), (0.0, 1.0), (1.0, 1.0), (0.1, 0.9), (0.63, 0.27)]
    points += [(0.999, 0.5), (0.02, 0.4), (0.5, 0.01)]
    coords = torch.tensor([points, points[::-1]], dtype=torch.float64)
    values = point_sample(maps, coords)
    assert values.shape == (2, 2, len(points))
    for n in range(2):
        for c in range(2):
            grid = maps[n, c].tolist()
            for p, (x, y) in enumerate(coords[n].tolist()):
                assert values[n, c, p].item() == pytest.approx(bilinear(grid, x, y), rel=1e-12)


def test_point_sample_align_corners_hits_the_corner_pixels():
    maps = torch.tensor([GRID], dtype=torch.float64)[None]
    coords = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.5, 0.5]]])
    values = point_sample(maps, coords.double(), align_corners=True)[0, 0].tolist()
    # align_corners=True: (0.5, 0.5) is pixel (1, 1.5), here too.
    assert values == pytest.approx([1.0, 8.0, 256.0, 2048.0, 48.0])


def test_point_sample_validation():
    with pytest.raises(ValueError, match=r"inputs \[N, C, H, W\]"):
        point_sample(torch.zeros(2, 3, 4), torch.zeros(2, 5, 2))
    with pytest.raises(ValueError, match=r"coords \[N=2, P, 2\]"):
        point_sample(torch.zeros(2, 1, 3, 4), torch.zeros(2, 5, 3))


# --------------------------------------------------------------------- point choice


def sharp_edge_logits(width=8):
    """``[1, 1, 6, width]``: +10 on the left half, -10 on the right half (edge at x = 0.5)."""
    logits = torch.full((1, 1, 6, width), -10.0)
    logits[..., : width // 2] = 10.0
    return logits


def test_uncertain_points_land_on_the_edge():
    width = 8
    generator = torch.Generator().manual_seed(0)
    points = sample_points_by_uncertainty(
        sharp_edge_logits(width), 8, oversample_ratio=40, importance_sample_ratio=0.75,
        generator=generator,
    )  # fmt: skip
    assert points.shape == (1, 8, 2)
    assert ((points >= 0) & (points <= 1)).all()
    # |logit| < 10 only between the centers of the two columns at the edge.
    distance_to_edge = (points[0, :, 0] - 0.5).abs()
    assert (distance_to_edge[:6] < 0.5 / width).all()  # the 6 = 0.75 * 8 uncertain points
    # The remaining 2 are uniform: with this seed not both on the edge.
    assert (distance_to_edge[6:] >= 0.5 / width).any()


def test_uniform_points_without_importance_sampling():
    logits = sharp_edge_logits()
    points = sample_points_by_uncertainty(
        logits, 50, importance_sample_ratio=0.0, generator=torch.Generator().manual_seed(7)
    )
    expected = torch.rand(1, 50, 2, generator=torch.Generator().manual_seed(7))
    assert torch.equal(points, expected)
    on_edge = ((points[0, :, 0] - 0.5).abs() < 0.5 / 8).float().mean()
    assert on_edge < 0.5


def test_point_choice_has_no_gradient_and_keeps_dtype():
    logits = torch.randn(3, 1, 5, 6, dtype=torch.float64, requires_grad=True)
    points = sample_points_by_uncertainty(logits, 10)
    assert points.shape == (3, 10, 2) and points.dtype == torch.float64
    assert not points.requires_grad


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_points": 0}, "num_points >= 1"),
        ({"num_points": 4, "oversample_ratio": 0.5}, "oversample_ratio >= 1"),
        ({"num_points": 4, "importance_sample_ratio": 1.5}, r"importance_sample_ratio in \[0, 1\]"),
    ],
)
def test_point_choice_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        sample_points_by_uncertainty(torch.zeros(2, 1, 3, 3), **kwargs)
    with pytest.raises(ValueError, match=r"logits \[N, 1, H, W\]"):
        sample_points_by_uncertainty(torch.zeros(2, 2, 3, 3), 4)


# --------------------------------------------------------------------- losses

LOGITS = [[0.0, 2.0, -1.0, 3.0], [-2.0, 0.5, 1.5, -0.5]]
TARGETS = [[1.0, 1.0, 0.0, 0.5], [0.0, 0.0, 1.0, 1.0]]


def test_dice_loss_hand_computed():
    loss = dice_loss(torch.tensor(LOGITS), torch.tensor(TARGETS), num_masks=3.0)
    expected = 0.0
    for logits, targets in zip(LOGITS, TARGETS, strict=True):
        probabilities = [sigmoid(v) for v in logits]
        numerator = 2 * sum(p * t for p, t in zip(probabilities, targets, strict=True)) + 1
        expected += 1 - numerator / (sum(probabilities) + sum(targets) + 1)
    assert loss.item() == pytest.approx(expected / 3.0, rel=1e-6)
    # Written out for the first mask: p = (0.5, 0.8808, 0.2689, 0.9526).
    first = dice_loss(torch.tensor(LOGITS[:1]), torch.tensor(TARGETS[:1]), 1.0)
    assert first.item() == pytest.approx(1 - (2 * (0.5 + 0.880797 + 0.476287) + 1) / 6.102312, 1e-5)


@pytest.mark.parametrize("alpha, gamma", [(0.25, 2.0), (0.5, 1.0)])
def test_sigmoid_focal_mask_loss_hand_computed(alpha, gamma):
    loss = sigmoid_focal_mask_loss(
        torch.tensor(LOGITS), torch.tensor(TARGETS), num_masks=3.0, alpha=alpha, gamma=gamma
    )
    per_mask = [
        sum(focal(v, t, alpha, gamma) for v, t in zip(logits, targets, strict=True)) / 4
        for logits, targets in zip(LOGITS, TARGETS, strict=True)
    ]
    assert loss.item() == pytest.approx(sum(per_mask) / 3.0, rel=1e-6)


def test_losses_without_masks_are_zero():
    empty = torch.zeros(0, 5)
    assert dice_loss(empty, empty, 1.0).item() == 0.0
    assert sigmoid_focal_mask_loss(empty, empty, 1.0).item() == 0.0


def test_loss_validation():
    logits = torch.zeros(2, 4)
    for loss in (dice_loss, sigmoid_focal_mask_loss):
        with pytest.raises(ValueError, match=r"same shape \[N, P\]"):
            loss(logits, torch.zeros(2, 5), 1.0)
        with pytest.raises(ValueError, match="num_masks > 0"):
            loss(logits, logits, 0.0)
        with pytest.raises(ValueError, match="at least one point"):
            loss(torch.zeros(2, 0), torch.zeros(2, 0), 1.0)
