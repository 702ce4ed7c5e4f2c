"""HungarianMatcher: cost formula against an independent NumPy version, optimality against
brute force, and the edge cases of the index contract."""

import itertools
import types

import numpy as np
import pytest
import torch
import torchvision.ops as tv_ops

from detr_ext.modeling.matchers import HungarianMatcher

COST_TYPES = ["ce_cost", "focal_loss_cost"]


def random_case(sizes, num_queries=4, num_classes=3):
    """Float64 predictions ``[B, Q, K]`` / ``[B, Q, 4]`` and targets with ``sizes[i]`` boxes."""
    batch_size = len(sizes)
    outputs = {
        "pred_logits": torch.randn(batch_size, num_queries, num_classes, dtype=torch.float64),
        "pred_boxes": torch.rand(batch_size, num_queries, 4, dtype=torch.float64) * 0.5 + 0.1,
    }
    targets = [
        {
            "labels": torch.randint(0, num_classes, (n,)),
            "boxes": torch.rand(n, 4, dtype=torch.float64) * 0.5 + 0.1,
        }
        for n in sizes
    ]
    return outputs, targets


def reference_cost(logits, pred_boxes, labels, target_boxes, matcher):
    """``[Q, n]`` cost written out with NumPy and torchvision's GIoU."""
    logits, pred_boxes = logits.numpy(), pred_boxes.numpy()
    labels, target_boxes = labels.numpy(), target_boxes.numpy()
    if matcher.cost_class_type == "ce_cost":
        exp = np.exp(logits - logits.max(-1, keepdims=True))
        class_cost = -(exp / exp.sum(-1, keepdims=True))[:, labels]
    else:
        p = 1 / (1 + np.exp(-logits[:, labels]))
        alpha, gamma = matcher.alpha, matcher.gamma
        class_cost = alpha * (1 - p) ** gamma * -np.log(p + 1e-8) - (
            1 - alpha
        ) * p**gamma * -np.log(1 - p + 1e-8)
    l1_cost = np.abs(pred_boxes[:, None, :] - target_boxes[None, :, :]).sum(-1)

    def to_xyxy(b):
        return torch.from_numpy(
            np.concatenate([b[:, :2] - b[:, 2:] / 2, b[:, :2] + b[:, 2:] / 2], 1)
        )

    giou = tv_ops.generalized_box_iou(to_xyxy(pred_boxes), to_xyxy(target_boxes)).numpy()
    return matcher.cost_class * class_cost + matcher.cost_bbox * l1_cost - matcher.cost_giou * giou


def brute_force_min_cost(cost):
    """Minimal total cost of matching every target (column) to a distinct query (row)."""
    num_queries, num_targets = cost.shape
    return min(
        sum(cost[query, target] for target, query in enumerate(queries))
        for queries in itertools.permutations(range(num_queries), num_targets)
    )


@pytest.mark.parametrize("cost_class_type", COST_TYPES)
def test_cost_matrix_matches_reference(cost_class_type):
    matcher = HungarianMatcher(2.0, 5.0, 2.0, cost_class_type=cost_class_type)
    outputs, targets = random_case([2, 3])
    costs = matcher.compute_cost(outputs, targets)
    assert [tuple(c.shape) for c in costs] == [(4, 2), (4, 3)]
    for image, cost in enumerate(costs):
        expected = reference_cost(
            outputs["pred_logits"][image],
            outputs["pred_boxes"][image],
            targets[image]["labels"],
            targets[image]["boxes"],
            matcher,
        )
        np.testing.assert_allclose(cost.numpy(), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cost_class_type", COST_TYPES)
def test_assignment_is_optimal(cost_class_type):
    matcher = HungarianMatcher(2.0, 5.0, 2.0, cost_class_type=cost_class_type)
    for _ in range(5):
        outputs, targets = random_case([1, 3, 4], num_queries=4)
        indices = matcher(outputs, targets)
        for image, (query_index, target_index) in enumerate(indices):
            cost = reference_cost(
                outputs["pred_logits"][image],
                outputs["pred_boxes"][image],
                targets[image]["labels"],
                targets[image]["boxes"],
                matcher,
            )
            # Every target is matched once, to distinct queries.
            assert sorted(target_index.tolist()) == list(range(cost.shape[1]))
            assert len(set(query_index.tolist())) == cost.shape[1]
            total = cost[query_index.numpy(), target_index.numpy()].sum()
            assert total == pytest.approx(brute_force_min_cost(cost), abs=1e-9)


def test_mixed_sizes_and_empty_targets():
    matcher = HungarianMatcher(cost_class_type="ce_cost")
    outputs, targets = random_case([1, 0, 3], num_queries=5)
    outputs = {k: v.float() for k, v in outputs.items()}
    for target in targets:
        target["boxes"] = target["boxes"].float()
    indices = matcher(outputs, targets)
    assert len(indices) == 3
    for (query_index, target_index), n in zip(indices, [1, 0, 3], strict=True):
        for index in (query_index, target_index):
            assert index.dtype == torch.int64
            assert index.device.type == "cpu"
            assert index.shape == (n,)


def test_all_targets_empty():
    matcher = HungarianMatcher()
    outputs, targets = random_case([0, 0])
    indices = matcher(outputs, targets)
    assert all(q.numel() == 0 and t.numel() == 0 for q, t in indices)
    assert all(q.dtype == t.dtype == torch.int64 for q, t in indices)


def test_more_targets_than_queries_matches_every_query():
    outputs, targets = random_case([5], num_queries=3)
    query_index, target_index = HungarianMatcher()(outputs, targets)[0]
    assert sorted(query_index.tolist()) == [0, 1, 2]
    assert len(set(target_index.tolist())) == 3


def test_no_grad():
    outputs, targets = random_case([2])
    outputs["pred_logits"].requires_grad_(True)
    costs = HungarianMatcher().compute_cost(outputs, targets)
    assert not costs[0].requires_grad


def test_invalid_arguments():
    with pytest.raises(ValueError, match="non-zero cost weight"):
        HungarianMatcher(0, 0, 0)
    with pytest.raises(ValueError, match="cost_class_type"):
        HungarianMatcher(cost_class_type="focal")
    matcher = HungarianMatcher()
    outputs, targets = random_case([1, 2])
    with pytest.raises(ValueError, match="one target dict per image"):
        matcher(outputs, targets[:1])
    with pytest.raises(ValueError, match=r"pred_boxes of shape \[B, Q, 4\]"):
        matcher({**outputs, "pred_boxes": outputs["pred_boxes"][..., :2]}, targets)
    targets[1]["boxes"] = targets[1]["boxes"][:1]
    with pytest.raises(ValueError, match=r"targets\[1\]"):
        matcher(outputs, targets)
    outputs, targets = random_case([2])
    targets[0]["boxes"][1, 2] = float("nan")  # a broken target is the data's fault: raised
    with pytest.raises(ValueError, match=r"targets\[0\] has 1 box\(es\) with non-finite"):
        matcher(outputs, targets)


@pytest.mark.parametrize("cost_class_type", ["ce_cost", "focal_loss_cost"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_predictions_are_matched_not_raised(cost_class_type, bad):
    """A diverging model's NaN / inf outputs still get a valid one-to-one assignment (so the
    losses come out non-finite and the trainer skips the step and names the divergence); the
    finite queries keep the assignment they would have without the bad one."""
    matcher = HungarianMatcher(cost_class_type=cost_class_type)
    outputs, targets = random_case([3], num_queries=6)
    outputs["pred_logits"][0, 5] = float("nan")
    outputs["pred_boxes"][0, 4, 1] = bad
    [(query_index, target_index)] = matcher(outputs, targets)
    assert sorted(target_index.tolist()) == [0, 1, 2]
    assert len(set(query_index.tolist())) == 3
    assert not {4, 5} & set(query_index.tolist())  # the bad queries cost the most


def saturated_case(sizes, dtype, num_queries=6, num_classes=3, seed=0):
    """Logits of +-20 (sigmoid 1 - 2e-9 / 2e-9) and boxes, all exactly representable in
    ``dtype``: the predictions in ``dtype`` and the same values in float32."""
    generator = torch.Generator().manual_seed(seed)
    batch_size = len(sizes)
    signs = torch.randint(0, 2, (batch_size, num_queries, num_classes), generator=generator)
    logits = (signs * 40.0 - 20.0).to(dtype)
    boxes = (torch.rand(batch_size, num_queries, 4, generator=generator) * 0.5 + 0.1).to(dtype)
    targets = [
        {
            "labels": torch.randint(0, num_classes, (n,), generator=generator),
            "boxes": torch.rand(n, 4, generator=generator) * 0.5 + 0.1,
        }
        for n in sizes
    ]
    reduced = {"pred_logits": logits, "pred_boxes": boxes}
    full = {"pred_logits": logits.float(), "pred_boxes": boxes.float()}
    return reduced, full, targets


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("cost_class_type", COST_TYPES)
def test_half_precision_logits_match_like_float32(cost_class_type, dtype):
    """float16 / bfloat16 predictions (as under autocast) are matched in float32: finite
    costs and the assignment of the same values in float32. In float16 the focal cost's
    ``log(1 - p + 1e-8)`` would be ``log(0)`` at logit 20, and ``torch.cdist`` has no
    half-precision CPU kernel."""
    matcher = HungarianMatcher(2.0, 5.0, 2.0, cost_class_type=cost_class_type)
    reduced, full, targets = saturated_case([3, 0, 2], dtype)
    costs = matcher.compute_cost(reduced, targets)
    assert all(cost.dtype == torch.float32 and torch.isfinite(cost).all() for cost in costs)
    for (query, target), (query_32, target_32) in zip(
        matcher(reduced, targets), matcher(full, targets), strict=True
    ):
        assert torch.equal(query, query_32) and torch.equal(target, target_32)


# Found by `make mutate` (mutmut survivors): which target boxes the non-finite path blames.
def test_non_finite_path_blames_negative_width_not_zero_width_targets():
    """With a diverged (NaN) query the cost is non-finite; a target box of zero width is
    still valid (matched), one of negative width (or height) is the data's fault (raised)."""
    matcher = HungarianMatcher()
    outputs, targets = random_case([2], num_queries=4)
    outputs["pred_boxes"][0, 3] = float("nan")
    targets[0]["boxes"][0, 2] = 0.0  # zero width: valid
    [(query_index, target_index)] = matcher(outputs, targets)
    assert sorted(target_index.tolist()) == [0, 1] and 3 not in query_index.tolist()
    for column in (2, 3):  # negative width, then negative height
        bad = [{**targets[0], "boxes": targets[0]["boxes"].clone()}]
        bad[0]["boxes"][1, column] = -0.1
        with pytest.raises(ValueError, match=r"HungarianMatcher: targets\[0\] has 1 box"):
            matcher(outputs, bad)


def test_zero_area_target_meeting_a_zero_area_prediction_is_named():
    """GIoU of two zero-area boxes is 0 / 0: the error blamed the cost weights."""
    outputs = {
        "pred_logits": torch.zeros(1, 2, 3),
        "pred_boxes": torch.tensor([[[0.5, 0.5, 0.0, 0.0], [0.2, 0.2, 0.1, 0.1]]]),
    }
    targets = [{"labels": torch.tensor([0]), "boxes": torch.tensor([[0.5, 0.5, 0.0, 0.0]])}]
    with pytest.raises(ValueError, match="zero width or height met a predicted box of zero"):
        HungarianMatcher(2, 5, 2)(outputs, targets)


@pytest.mark.parametrize("weights", [(0, 1, 1), (1, 0, 1), (1, 1, 0), (0, 0, 1), (1, 0, 0)])
def test_any_single_zero_cost_weight_is_allowed(weights):
    """Only all three weights zero is an error; each one alone may be zero (e.g. no class
    cost), and the matching then follows the remaining terms: the assignment is the brute-force
    optimum of the remaining weighted terms (written out here with these weights, not read
    from the matcher). Guards against a zero weight zeroing (or ignoring) the whole cost, and
    checks that the cases are ones where the zeroed term would change the optimum."""
    with torch.random.fork_rng():
        torch.manual_seed(7)
        cases = [random_case([2, 3], num_queries=4) for _ in range(4)]
    matcher = HungarianMatcher(*weights)
    cost_class, cost_bbox, cost_giou = weights
    remaining = types.SimpleNamespace(
        cost_class=cost_class,
        cost_bbox=cost_bbox,
        cost_giou=cost_giou,
        cost_class_type="focal_loss_cost",
        alpha=0.25,
        gamma=2.0,
    )
    all_terms = types.SimpleNamespace(
        **{**vars(remaining), "cost_class": 1, "cost_bbox": 1, "cost_giou": 1}
    )
    zeroed_term_mattered = False
    for outputs, targets in cases:
        indices = matcher(outputs, targets)
        assert len(indices) == len(targets)
        for image, (query_index, target_index) in enumerate(indices):
            args = (
                outputs["pred_logits"][image],
                outputs["pred_boxes"][image],
                targets[image]["labels"],
                targets[image]["boxes"],
            )
            cost = reference_cost(*args, remaining)
            assert sorted(target_index.tolist()) == list(range(cost.shape[1]))
            assert len(set(query_index.tolist())) == cost.shape[1]
            total = cost[query_index.numpy(), target_index.numpy()].sum()
            assert total == pytest.approx(brute_force_min_cost(cost), abs=1e-9), weights
            # Would the assignment that also counts the zeroed term(s) be optimal here too?
            full = reference_cost(*args, all_terms)
            best = min(
                itertools.permutations(range(cost.shape[0]), cost.shape[1]),
                key=lambda rows: sum(full[q, t] for t, q in enumerate(rows)),
            )
            best_total = sum(cost[q, t] for t, q in enumerate(best))
            zeroed_term_mattered |= best_total > brute_force_min_cost(cost) + 1e-9
    assert zeroed_term_mattered, "no case where the zeroed term changes the optimum"


# Found by `make mutate`: the defaults, the stored class cost type, every input error's
# message, and how a +inf logit (a saturated "certain" prediction) is matched.
def test_defaults_are_detrex_values():
    matcher = HungarianMatcher()
    assert (matcher.cost_class, matcher.cost_bbox, matcher.cost_giou) == (1.0, 1.0, 1.0)
    assert matcher.cost_class_type == "focal_loss_cost"
    assert (matcher.alpha, matcher.gamma) == (0.25, 2.0)


def test_cost_class_type_decides_the_class_term():
    outputs, targets = random_case([3])
    logits, labels = outputs["pred_logits"][0], targets[0]["labels"]
    ce = HungarianMatcher(cost_class_type="ce_cost")
    torch.testing.assert_close(ce.class_cost(logits, labels), -logits.softmax(-1)[:, labels])
    focal = HungarianMatcher(cost_class_type="focal_loss_cost")
    assert not torch.allclose(focal.class_cost(logits, labels), ce.class_cost(logits, labels))


INPUT_ERRORS = {
    "missing-key": (
        lambda o, t: ({"pred_boxes": o["pred_boxes"]}, t),
        r"outputs must contain 'pred_logits', got keys \['pred_boxes'\]",
    ),
    "logits-2d": (
        lambda o, t: ({**o, "pred_logits": o["pred_logits"][0]}, t),
        r"pred_logits of shape \[B, Q, K\], got \(4, 3\)",
    ),
    "boxes-shape": (
        lambda o, t: ({**o, "pred_boxes": o["pred_boxes"][..., :2]}, t),
        r"= \(2, 4, 4\), got \(2, 4, 2\)",
    ),
    "targets-count": (lambda o, t: (o, t[:1]), r"one target dict per image \(2\), got 1"),
    "no-boxes": (
        lambda o, t: (o, [t[0], {"labels": t[1]["labels"]}]),
        r"targets\[1\] must contain 'labels' and 'boxes', got keys \['labels'\]",
    ),
    "no-labels": (lambda o, t: (o, [t[0], {"boxes": t[1]["boxes"]}]), r"got keys \['boxes'\]"),
    "float-labels": (
        lambda o, t: (o, [t[0], {**t[1], "labels": t[1]["labels"].float()}]),
        r"targets\[1\]\['labels'\] must be an integer tensor, got torch.float32",
    ),
}


@pytest.mark.parametrize("case", sorted(INPUT_ERRORS))
def test_input_errors_name_what_was_expected_and_got(case):
    break_inputs, message = INPUT_ERRORS[case]
    outputs, targets = random_case([1, 2])
    with pytest.raises(ValueError, match="HungarianMatcher: .*" + message):
        HungarianMatcher()(*break_inputs(outputs, targets))


def test_a_plus_inf_logit_is_the_most_wanted_match():
    """A +inf logit for the target's class gives the focal cost -inf: the query is matched to
    that target (the cost is clamped to a large negative value, not to a large positive)."""
    matcher = HungarianMatcher(cost_class_type="focal_loss_cost")
    outputs, targets = random_case([1], num_queries=5)
    query = 3
    outputs["pred_logits"][0, query, targets[0]["labels"][0]] = float("inf")
    outputs["pred_boxes"][0, query] = torch.tensor([0.9, 0.9, 0.05, 0.05], dtype=torch.float64)
    [(query_index, target_index)] = matcher(outputs, targets)
    assert query_index.tolist() == [query] and target_index.tolist() == [0]
