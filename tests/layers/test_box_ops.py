"""Box conversions and IoUs, checked against torchvision in float64."""

import pytest
import torch
import torchvision.ops as tv_ops

from detr_ext.layers.box_ops import (
    box_area,
    box_cxcywh_to_xyxy,
    box_iou,
    box_xyxy_to_cxcywh,
    generalized_box_iou,
    matched_box_iou,
    matched_generalized_box_iou,
)


def random_xyxy(num: int, dtype=torch.float64) -> torch.Tensor:
    """``[num, 4]`` valid xyxy boxes with positive width and height."""
    top_left = torch.rand(num, 2, dtype=dtype)
    size = torch.rand(num, 2, dtype=dtype) * 0.5 + 0.01
    return torch.cat([top_left, top_left + size], dim=-1)


def test_cxcywh_roundtrip_and_values():
    boxes = torch.tensor([[0.5, 0.4, 0.2, 0.6]], dtype=torch.float64)
    xyxy = box_cxcywh_to_xyxy(boxes)
    torch.testing.assert_close(xyxy, torch.tensor([[0.4, 0.1, 0.6, 0.7]], dtype=torch.float64))
    cxcywh = torch.rand(2, 5, 4, dtype=torch.float64)  # any leading dims
    torch.testing.assert_close(box_xyxy_to_cxcywh(box_cxcywh_to_xyxy(cxcywh)), cxcywh)
    assert box_cxcywh_to_xyxy(cxcywh).shape == (2, 5, 4)


def test_box_area_matches_torchvision():
    boxes = random_xyxy(7)
    torch.testing.assert_close(box_area(boxes), tv_ops.box_area(boxes))


@pytest.mark.parametrize("num1,num2", [(5, 7), (1, 1), (0, 3)])
def test_pairwise_iou_matches_torchvision(num1, num2):
    boxes1, boxes2 = random_xyxy(num1), random_xyxy(num2)
    iou, union = box_iou(boxes1, boxes2)
    assert iou.shape == union.shape == (num1, num2)
    torch.testing.assert_close(iou, tv_ops.box_iou(boxes1, boxes2))
    torch.testing.assert_close(
        generalized_box_iou(boxes1, boxes2), tv_ops.generalized_box_iou(boxes1, boxes2)
    )
    expected_union = tv_ops.box_area(boxes1)[:, None] + tv_ops.box_area(boxes2)[None, :]
    torch.testing.assert_close(union, expected_union - iou * union)


def test_giou_hand_values():
    unit = torch.tensor([[0.0, 0.0, 1.0, 1.0]], dtype=torch.float64)
    disjoint = torch.tensor([[2.0, 0.0, 3.0, 1.0]], dtype=torch.float64)
    half = torch.tensor([[0.5, 0.0, 1.5, 1.0]], dtype=torch.float64)
    # Disjoint: IoU 0, enclosing area 3, union 2.
    assert generalized_box_iou(unit, disjoint).item() == pytest.approx(-1 / 3)
    # Half overlap: IoU 0.5 / 1.5, the enclosing box equals the union.
    assert generalized_box_iou(unit, half).item() == pytest.approx(1 / 3)
    assert generalized_box_iou(unit, unit).item() == 1.0


def test_matched_equals_diagonal_of_pairwise():
    boxes1, boxes2 = random_xyxy(6), random_xyxy(6)
    boxes2[0] = boxes1[0]  # one identical pair
    # Same element-wise operations, so the values agree exactly, not just closely.
    assert torch.equal(matched_box_iou(boxes1, boxes2), box_iou(boxes1, boxes2)[0].diag())
    assert torch.equal(
        matched_generalized_box_iou(boxes1, boxes2), generalized_box_iou(boxes1, boxes2).diag()
    )
    assert matched_generalized_box_iou(boxes1[:0], boxes2[:0]).shape == (0,)


def test_shape_errors():
    with pytest.raises(ValueError, match="4 coordinates"):
        box_cxcywh_to_xyxy(torch.zeros(3, 5))
    with pytest.raises(ValueError, match=r"\[N, 4\]"):
        box_iou(torch.zeros(2, 3, 4), torch.zeros(3, 4))
    with pytest.raises(ValueError, match="same shape"):
        matched_generalized_box_iou(torch.zeros(3, 4), torch.zeros(2, 4))


# Found by `make mutate` (mutmut survivors): the error messages must name the function and
# the argument at fault, the [N, 4] check must cover both arguments of the pairwise and matched
# IoUs, and a single box of shape [4] is a valid input (only a 0-d tensor is not).
@pytest.mark.parametrize(
    "call,message",
    [
        (lambda: box_cxcywh_to_xyxy(torch.zeros(3)), "box_cxcywh_to_xyxy: expected boxes"),
        (lambda: box_xyxy_to_cxcywh(torch.zeros(3)), "box_xyxy_to_cxcywh: expected boxes"),
        (lambda: box_area(torch.zeros(3)), "box_area: expected boxes"),
        (lambda: box_iou(torch.zeros(2, 3), torch.zeros(3, 4)), "box_iou boxes1: expected"),
        (lambda: box_iou(torch.zeros(3, 4), torch.zeros(2, 3)), "box_iou boxes2: expected"),
        (lambda: box_iou(torch.zeros(3, 4), torch.zeros(1, 3, 4)), r"box_iou boxes2: .*\[N, 4\]"),
        (
            lambda: matched_box_iou(torch.zeros(2, 3), torch.zeros(2, 4)),
            "matched_box_iou boxes1: expected",
        ),
        (
            lambda: matched_box_iou(torch.zeros(2, 4), torch.zeros(2, 3)),
            "matched_box_iou boxes2: expected",
        ),
        (
            lambda: matched_generalized_box_iou(torch.zeros(2, 4), torch.zeros(1, 2, 4)),
            r"matched_generalized_box_iou boxes2: .*\[N, 4\]",
        ),
        (
            lambda: matched_generalized_box_iou(torch.zeros(1, 2, 4), torch.zeros(2, 4)),
            r"matched_generalized_box_iou boxes1: .*\[N, 4\]",
        ),
        (
            lambda: matched_box_iou(torch.zeros(3, 4), torch.zeros(2, 4)),
            "matched_box_iou: expected boxes1 and boxes2 of the same shape",
        ),
        (lambda: box_area(torch.tensor(1.0)), "box_area: expected boxes with 4 coordinates"),
    ],
)
def test_errors_name_the_function_and_argument(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_single_box_of_shape_4_is_accepted():
    box = torch.tensor([0.5, 0.5, 0.2, 0.4], dtype=torch.float64)
    xyxy = box_cxcywh_to_xyxy(box)
    torch.testing.assert_close(xyxy, torch.tensor([0.4, 0.3, 0.6, 0.7], dtype=torch.float64))
    assert box_area(xyxy).item() == pytest.approx(0.08)
