"""ManyToOneMatcher: each target matched k times, no query twice, minimal total cost (brute
force), k = 1 equals the Hungarian matcher, empty targets, and k * n > Q."""

import itertools
from collections import Counter

import pytest
import torch

from detr_ext.modeling.matchers import (
    HungarianMatcher,
    ManyToOneMatcher,
    MixedMatcher,
    effective_match_number,
)


def random_case(sizes, num_queries=6, num_classes=3, seed=0):
    generator = torch.Generator().manual_seed(seed)
    batch_size = len(sizes)
    outputs = {
        "pred_logits": torch.randn(
            batch_size, num_queries, num_classes, dtype=torch.float64, generator=generator
        ),
        "pred_boxes": torch.rand(
            batch_size, num_queries, 4, dtype=torch.float64, generator=generator
        )
        * 0.5
        + 0.1,
    }
    targets = [
        {
            "labels": torch.randint(0, num_classes, (n,), generator=generator),
            "boxes": torch.rand(n, 4, dtype=torch.float64, generator=generator) * 0.5 + 0.1,
        }
        for n in sizes
    ]
    return outputs, targets


def brute_force_min_cost(cost, match_number):
    """Minimal total cost over all ways to give each target ``k`` distinct queries."""
    num_queries, num_targets = cost.shape
    columns = [t for t in range(num_targets) for _ in range(match_number)]
    return min(
        sum(float(cost[q, t]) for q, t in zip(rows, columns, strict=True))
        for rows in itertools.permutations(range(num_queries), len(columns))
    )


def make_matcher(max_positive_fraction=1.0):
    """Assignment tests use few queries: by default k is lowered only where the queries do not
    suffice (``test_too_few_queries_lowers_k`` covers detrex's default of half)."""
    return ManyToOneMatcher(
        cost_class=2.0, cost_bbox=5.0, cost_giou=2.0, max_positive_fraction=max_positive_fraction
    )


def test_mixed_matcher_is_the_same_class():
    assert MixedMatcher is ManyToOneMatcher
    assert issubclass(ManyToOneMatcher, HungarianMatcher)


@pytest.mark.parametrize("sizes, match_number", [((2, 1), 2), ((1, 2), 3), ((3, 0), 2)])
def test_each_target_k_times_no_query_twice_and_optimal(sizes, match_number):
    matcher = make_matcher()
    outputs, targets = random_case(sizes, num_queries=6)
    indices = matcher(outputs, targets, match_number=match_number)
    costs = matcher.compute_cost(outputs, targets)
    for (query_index, target_index), cost, n in zip(indices, costs, sizes, strict=True):
        assert query_index.dtype == target_index.dtype == torch.int64
        assert len(query_index) == len(target_index) == match_number * n
        assert Counter(target_index.tolist()) == {t: match_number for t in range(n)}
        assert len(set(query_index.tolist())) == len(query_index)  # no query twice
        assert torch.all(query_index[1:] > query_index[:-1])  # ordered by query
        if n:
            total = cost[query_index, target_index].sum().item()
            assert total == pytest.approx(brute_force_min_cost(cost, match_number), abs=1e-9)


def test_match_number_one_is_hungarian():
    outputs, targets = random_case((3, 2), num_queries=5, seed=3)
    ours = make_matcher()(outputs, targets, match_number=1)
    hungarian = HungarianMatcher(cost_class=2.0, cost_bbox=5.0, cost_giou=2.0)(outputs, targets)
    for (q1, t1), (q2, t2) in zip(ours, hungarian, strict=True):
        assert torch.equal(q1, q2) and torch.equal(t1, t2)


def test_hand_made_cost():
    """Target 0 prefers queries 0, 1; target 1 prefers 1, 2; with k = 2 the optimum gives
    query 1 to one of them and the next best (3) to the other."""
    cost = torch.tensor(
        [[0.0, 5.0], [1.0, 0.0], [5.0, 1.0], [2.0, 3.0], [9.0, 9.0]], dtype=torch.float64
    )
    query_index, target_index = make_matcher().assign(cost, match_number=2)
    assert sorted(zip(query_index.tolist(), target_index.tolist())) == [
        (0, 0),
        (1, 1),
        (2, 1),
        (3, 0),
    ]


@pytest.mark.parametrize("sizes", [(0, 0), (0, 2, 0)], ids=["all-empty", "empty-around-one"])
def test_empty_targets(sizes):
    """One ``(query_index, target_index)`` pair per image, in batch order, also for images
    without targets: an image with none gets two empty int64 CPU tensors (the loss indexes the
    result by image, so dropping empty images shifted the others' matches onto them)."""
    outputs, targets = random_case(sizes, num_queries=4)
    indices = make_matcher()(outputs, targets, match_number=2)
    assert isinstance(indices, list) and len(indices) == len(sizes)
    for (query_index, target_index), n in zip(indices, sizes, strict=True):
        for index in (query_index, target_index):
            assert isinstance(index, torch.Tensor)
            assert index.dtype == torch.int64 and index.device.type == "cpu"
            assert index.shape == (2 * n,)
        assert Counter(target_index.tolist()) == {t: 2 for t in range(n)}


def test_too_few_queries_lowers_k():
    """k * n > Q / 2: k drops to Q // (2 n) for every target of that image (at least 1), so
    that at least half of the queries stay negative when k allows (detrex's MixedMatcher)."""
    assert effective_match_number(2, 5, 3) == 1
    assert effective_match_number(3, 7, 3) == 1
    assert effective_match_number(3, 12, 3) == 2
    assert effective_match_number(3, 18, 3) == 3
    assert effective_match_number(2, 900, 225) == 2
    assert effective_match_number(2, 900, 226) == 1
    assert effective_match_number(2, 900, 100) == 2
    assert effective_match_number(2, 4, 0) == 2
    # max_positive_fraction=1: lowered only where the queries do not suffice.
    assert effective_match_number(3, 7, 3, 1.0) == 2
    assert effective_match_number(2, 5, 2, 1.0) == 2
    assert effective_match_number(2, 5, 3, 1.0) == 1
    matcher = ManyToOneMatcher(cost_class=2.0, cost_bbox=5.0, cost_giou=2.0)
    assert matcher.max_positive_fraction == 0.5
    outputs, targets = random_case((3, 2, 6, 1), num_queries=10, seed=1)
    indices = matcher(outputs, targets, match_number=3)
    # Image 0: k = 10 // 6 = 1; image 1: k = 10 // 4 = 2; image 2 (n > Q / 2): one-to-one;
    # image 3: k = 3. Unlike detrex, image 0's crowd does not lower k for the later images.
    assert Counter(indices[0][1].tolist()) == {0: 1, 1: 1, 2: 1}
    assert Counter(indices[1][1].tolist()) == {0: 2, 1: 2}
    assert Counter(indices[2][1].tolist()) == {i: 1 for i in range(6)}
    assert Counter(indices[3][1].tolist()) == {0: 3}
    # max_positive_fraction=1 on the same case: image 0 gets k = 10 // 3 = 3.
    indices = make_matcher(1.0)(outputs, targets, match_number=3)
    assert Counter(indices[0][1].tolist()) == {0: 3, 1: 3, 2: 3}
    outputs, targets = random_case((12,), num_queries=10, seed=2)  # n > Q: Q pairs
    ((query_index, target_index),) = matcher(outputs, targets, match_number=2)
    assert len(query_index) == 10 and len(set(target_index.tolist())) == 10
    for query_index, _ in indices:
        assert len(set(query_index.tolist())) == len(query_index)


@pytest.mark.parametrize("bad", [0, 0.0, -0.5, 1.5, "0.5", True, None])
def test_invalid_max_positive_fraction(bad):
    with pytest.raises(ValueError, match="max_positive_fraction"):
        ManyToOneMatcher(cost_class=2.0, max_positive_fraction=bad)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_invalid_match_number(bad):
    outputs, targets = random_case((1,), num_queries=3)
    with pytest.raises(ValueError, match="match_number"):
        make_matcher()(outputs, targets, match_number=bad)


def test_non_finite_cost_raises():
    cost = torch.tensor([[0.0, float("nan")], [1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    with pytest.raises(ValueError, match="NaN or inf"):
        make_matcher().assign(cost, match_number=2)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("cost_class_type", ["ce_cost", "focal_loss_cost"])
def test_half_precision_logits_match_like_float32(cost_class_type, dtype):
    """float16 / bfloat16 logits of +-20 (as under autocast): the k-fold assignment equals
    that of the same values in float32 (the cost is computed in float32)."""
    generator = torch.Generator().manual_seed(0)
    signs = torch.randint(0, 2, (2, 8, 3), generator=generator)
    reduced = {
        "pred_logits": (signs * 40.0 - 20.0).to(dtype),
        "pred_boxes": (torch.rand(2, 8, 4, generator=generator) * 0.5 + 0.1).to(dtype),
    }
    full = {key: value.float() for key, value in reduced.items()}
    targets = [
        {"labels": torch.tensor([0, 2, 1]), "boxes": torch.rand(3, 4, generator=generator) * 0.5},
        {"labels": torch.tensor([1]), "boxes": torch.tensor([[0.4, 0.4, 0.2, 0.3]])},
    ]
    matcher = ManyToOneMatcher(
        2.0, 5.0, 2.0, cost_class_type=cost_class_type, max_positive_fraction=1.0
    )
    indices = matcher(reduced, targets, match_number=2)
    for (query, target), (query_32, target_32), n in zip(
        indices, matcher(full, targets, match_number=2), (3, 1), strict=True
    ):
        assert len(query) == 2 * n
        assert torch.equal(query, query_32) and torch.equal(target, target_32)


# Found by `make mutate` (mutmut survivor): the default is one match per target.
def test_default_match_number_is_one():
    outputs, targets = random_case((3, 2), num_queries=5, seed=3)
    matcher = make_matcher()
    default, one = matcher(outputs, targets), matcher(outputs, targets, match_number=1)
    for (q1, t1), (q2, t2) in zip(default, one, strict=True):
        assert torch.equal(q1, q2) and torch.equal(t1, t2)
    cost = torch.tensor([[0.0, 5.0], [1.0, 6.0], [9.0, 0.5], [9.0, 0.7]])
    query_index, target_index = matcher.assign(cost)  # 4 queries could take 2 per target
    assert sorted(query_index.tolist()) == [0, 2] and sorted(target_index.tolist()) == [0, 1]
