"""combine_panoptic on hand-made query masks: every expected segment map is written out."""

import pytest
import torch

from detr_ext.modeling import combine_panoptic

ON, OFF = 10.0, -10.0  # mask logits: sigmoid 0.99995 / 0.00005
IS_THING = [True, True, True, False]  # classes 0-2 things, 3 stuff


def _masks(*regions, height=4, width=8):
    """``[len(regions), height, width]`` logits: ON inside ``region = (rows, cols)`` slices."""
    logits = torch.full((len(regions), height, width), OFF)
    for index, (rows, cols) in enumerate(regions):
        logits[index, rows, cols] = ON
    return logits


def _combine(logits, scores, labels, **kwargs):
    options = {"score_threshold": 0.85, "overlap_threshold": 0.5, "min_area": 4, **kwargs}
    return combine_panoptic(logits, torch.tensor(scores), torch.tensor(labels), IS_THING, **options)


def test_no_query_above_the_score_threshold_gives_void():
    logits = _masks((slice(None), slice(None)))
    panoptic, segments = _combine(logits, [0.85], [0])  # not above 0.85
    assert panoptic.dtype == torch.int32 and panoptic.shape == (4, 8)
    assert torch.equal(panoptic, torch.zeros(4, 8, dtype=torch.int32))
    assert segments == []
    panoptic, segments = _combine(torch.zeros(0, 4, 8), [], [])  # no queries at all
    assert torch.equal(panoptic, torch.zeros(4, 8, dtype=torch.int32)) and segments == []


def test_two_overlapping_things_score_weighted():
    # A (score 0.9, class 0) covers columns 0-5, B (score 0.95, class 1) columns 4-7 of rows
    # 0-2 (row 3 is covered by nobody: void). In the shared columns 4-5, A is sure (logit 10)
    # and B less so (logit 3): 0.95 * sigmoid(3) = 0.9049 > 0.9 * sigmoid(10) = 0.89996, so B
    # wins them (a plain argmax of the masks would give them to A).
    logits = _masks((slice(0, 3), slice(0, 6)), (slice(0, 3), slice(4, 8)))
    logits[1, 0:3, 4:6] = 3.0
    panoptic, segments = _combine(logits, [0.9, 0.95], [0, 1])
    expected = torch.zeros(4, 8, dtype=torch.int32)
    expected[0:3, 4:8] = 1  # B first: ids follow decreasing score
    expected[0:3, 0:4] = 2  # A keeps 12 of its 18 pixels: 0.67 >= overlap 0.5
    assert torch.equal(panoptic, expected)
    assert segments == [
        {"id": 1, "isthing": True, "category_id": 1, "score": pytest.approx(0.95), "area": 12},
        {"id": 2, "isthing": True, "category_id": 0, "score": pytest.approx(0.9), "area": 12},
    ]

    # With overlap 0.8, A (12 / 18 visible) is dropped and its pixels become void.
    panoptic, segments = _combine(logits, [0.9, 0.95], [0, 1], overlap_threshold=0.8)
    expected[expected == 2] = 0
    assert torch.equal(panoptic, expected)
    assert [(s["id"], s["category_id"], s["area"]) for s in segments] == [(1, 1, 12)]


def test_stuff_queries_of_one_class_merge():
    # Two background (class 3) queries, top and bottom halves, and a thing in between them
    # on the right: one stuff segment with the higher score and both areas.
    logits = _masks(
        (slice(0, 2), slice(0, 8)),  # stuff, score 0.9: 16 px
        (slice(2, 4), slice(0, 6)),  # stuff, score 0.88: 12 px
        (slice(2, 4), slice(6, 8)),  # thing, score 0.99: 4 px
    )
    panoptic, segments = _combine(logits, [0.9, 0.88, 0.99], [3, 3, 2])
    expected = torch.ones(4, 8, dtype=torch.int32) * 2
    expected[2:4, 6:8] = 1
    assert torch.equal(panoptic, expected)
    assert segments == [
        {"id": 1, "isthing": True, "category_id": 2, "score": pytest.approx(0.99), "area": 4},
        {"id": 2, "isthing": False, "category_id": 3, "score": pytest.approx(0.9), "area": 28},
    ]


def test_things_of_one_class_stay_separate():
    logits = _masks((slice(0, 4), slice(0, 4)), (slice(0, 4), slice(4, 8)))
    panoptic, segments = _combine(logits, [0.9, 0.95], [1, 1])
    assert [(s["id"], s["area"]) for s in segments] == [(1, 16), (2, 16)]
    assert torch.equal(panoptic[:, 4:], torch.ones(4, 4, dtype=torch.int32))
    assert torch.equal(panoptic[:, :4], torch.full((4, 4), 2, dtype=torch.int32))


def test_segment_under_min_area_is_dropped():
    # A 3-pixel thing next to a 12-pixel one: min_area 4 drops it (void), min_area 3 keeps it.
    logits = _masks((slice(0, 1), slice(0, 3)), (slice(1, 4), slice(0, 4)))
    panoptic, segments = _combine(logits, [0.9, 0.9], [0, 1], min_area=4)
    assert [(s["category_id"], s["area"]) for s in segments] == [(1, 12)]
    assert int((panoptic > 0).sum()) == 12 and torch.all(panoptic[0] == 0)
    panoptic, segments = _combine(logits, [0.9, 0.9], [0, 1], min_area=3)
    assert sorted((s["category_id"], s["area"]) for s in segments) == [(0, 3), (1, 12)]
    assert int((panoptic > 0).sum()) == 15


def test_default_min_area_drops_segments_of_at_most_4_pixels_as_detr():
    """DETR drops segments of area <= 4; the default used to drop only those under 4 px."""
    logits = _masks(
        (slice(0, 1), slice(0, 4)), (slice(2, 3), slice(0, 5)), (slice(3, 4), slice(None))
    )
    panoptic, segments = combine_panoptic(
        logits, torch.tensor([0.9, 0.9, 0.9]), torch.tensor([0, 1, 2]), IS_THING
    )
    assert sorted((s["category_id"], s["area"]) for s in segments) == [(1, 5), (2, 8)]
    assert torch.all(panoptic[0] == 0)


def test_rejects_labels_outside_is_thing_and_bad_shapes():
    logits = _masks((slice(0, 4), slice(0, 4)))
    with pytest.raises(ValueError, match="labels in"):
        _combine(logits, [0.9], [4])
    with pytest.raises(ValueError, match="scores and labels"):
        _combine(logits, [0.9, 0.9], [0, 1])
    with pytest.raises(ValueError, match=r"\[Q, H, W\]"):
        _combine(logits[0], [0.9], [0])
