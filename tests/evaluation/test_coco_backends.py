"""hotcoco and pycocotools give the same COCO metrics on the corner cases of COCO evaluation
(crowds, empty images, more detections than maxDets, area ranges, masks, sparse category ids,
image subsets), and differ where pycocotools is wrong: ground-truth annotation id 0."""

from __future__ import annotations

import contextlib
import copy
import io

import numpy as np
import pytest
from pycocotools.cocoeval import COCOeval

from detr_ext.evaluation import coco_backend
from detr_ext.evaluation.coco_backend import (
    evaluate_on_coco,
    load_coco_gt,
    resolve_backend,
    summary_lines,
    summary_stats,
)
from tests.evaluation import synthetic_coco
from tests.evaluation.synthetic_coco import SyntheticCoco, on_crowd

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools.*")

BOTH = ("hotcoco", "pycocotools")

CASES = {
    "crowd_regions": synthetic_coco.crowd_regions,
    "empty_images": synthetic_coco.empty_images,
    "many_detections": synthetic_coco.many_detections,
    "many_detections_maxdets_300": lambda: synthetic_coco.many_detections([1, 10, 300]),
    "area_ranges": synthetic_coco.area_ranges,
    "masks_segm": lambda: synthetic_coco.masks("segm"),
    "masks_bbox": lambda: synthetic_coco.masks("bbox"),
    "sparse_category_ids": synthetic_coco.sparse_category_ids,
    "image_subset": synthetic_coco.image_subset,
}


def evaluate(case: SyntheticCoco, backend: str, gt_path: str, results: list[dict] | None = None):
    return evaluate_on_coco(
        load_coco_gt(gt_path, backend),
        case.results if results is None else results,
        case.iou_type,
        backend,
        img_ids=case.img_ids,
        max_dets_per_image=case.max_dets,
        print_summary=False,
    )


def assert_same_metrics(evals: dict) -> None:
    hot, pyc = evals["hotcoco"], evals["pycocotools"]
    np.testing.assert_allclose(summary_stats(hot), summary_stats(pyc), rtol=0, atol=1e-12)
    for key in ("precision", "recall", "scores"):
        ours, theirs = np.asarray(hot.eval[key]), np.asarray(pyc.eval[key])
        assert ours.shape == theirs.shape, (key, ours.shape, theirs.shape)
        np.testing.assert_array_equal(ours, theirs, err_msg=key)


@pytest.mark.parametrize("name", list(CASES))
def test_backends_agree(name, tmp_path):
    case = CASES[name]()
    gt_path = case.write_gt(tmp_path / "gt.json")
    evals = {backend: evaluate(case, backend, gt_path) for backend in BOTH}
    assert_same_metrics(evals)

    precision = np.asarray(evals["hotcoco"].eval["precision"])
    num_cats = len(case.gt["categories"])
    num_max_dets = len(case.max_dets or [1, 10, 100])
    assert precision.shape == (10, 101, num_cats, 4, num_max_dets)
    # Not a degenerate case that any two evaluators would agree on.
    stats = summary_stats(evals["pycocotools"])
    assert 0.0 < stats[0] < 1.0 and len(set(np.round(stats, 6))) > 4, stats


def test_detections_on_crowd_regions_are_ignored(tmp_path):
    """A detection matched to a crowd region is neither a true nor a false positive: dropping
    every detection that lies on a crowd leaves the metrics unchanged, in both backends."""
    case = synthetic_coco.crowd_regions()
    gt_path = case.write_gt(tmp_path / "gt.json")
    off_crowds = [r for r in case.results if not on_crowd(r, case.gt["annotations"])]
    assert len(case.results) - len(off_crowds) == case.notes["detections_on_crowds"]
    for backend in BOTH:
        with_crowd_hits = evaluate(case, backend, gt_path)
        without = evaluate(case, backend, gt_path, results=off_crowds)
        np.testing.assert_array_equal(
            np.asarray(with_crowd_hits.eval["precision"]), np.asarray(without.eval["precision"])
        )


def test_max_dets_changes_what_counts(tmp_path):
    """The low-scoring true positives beyond the 100th detection count with maxDets 300: the
    case really exercises the cut, and max_dets_per_image reaches both backends."""
    default, wide = synthetic_coco.many_detections(), synthetic_coco.many_detections([1, 10, 300])
    gt_path = default.write_gt(tmp_path / "gt.json")
    for backend in BOTH:
        recall_100 = summary_stats(evaluate(default, backend, gt_path))[8]
        recall_300 = summary_stats(evaluate(wide, backend, gt_path))[8]
        assert recall_300 > recall_100 + 0.05, (backend, recall_100, recall_300)


def test_img_ids_restrict_evaluation(tmp_path):
    """Without img_ids the background detections on the other images lower AP: the case
    exercises the restriction, and img_ids reaches both backends."""
    case = synthetic_coco.image_subset()
    gt_path = case.write_gt(tmp_path / "gt.json")
    for backend in BOTH:
        subset = summary_stats(evaluate(case, backend, gt_path))
        case_all = SyntheticCoco(case.gt, case.results)
        everything = summary_stats(evaluate(case_all, backend, gt_path))
        assert not np.allclose(subset, everything), backend


@pytest.mark.parametrize("first_id", [0, 1])
def test_annotation_id_zero(first_id, tmp_path):
    """A perfect detector scores AP 1.0 whatever the annotation ids. pycocotools records "no
    match" as gt id 0, so the gt with id 0 is never matched and its detection counts as a false
    positive: pycocotools is wrong there, hotcoco right."""
    case = synthetic_coco.perfect_detector(first_ann_id=first_id)
    gt_path = case.write_gt(tmp_path / "gt.json")
    ap = {backend: summary_stats(evaluate(case, backend, gt_path))[0] for backend in BOTH}
    assert ap["hotcoco"] == 1.0
    if first_id == 0:
        assert ap["pycocotools"] < 0.95, ap
    else:
        assert ap["pycocotools"] == 1.0


def pycocotools_summary(case: SyntheticCoco, gt_path: str) -> tuple[list[str], np.ndarray]:
    """What pycocotools' own ``summarize()`` prints (detectron2's ``COCOevalMaxDets`` for a
    custom maxDets, as detectron2 and ``evaluate_on_coco`` use it), and its stats."""
    from detectron2.evaluation.coco_evaluation import COCOevalMaxDets

    coco_gt = load_coco_gt(gt_path, "pycocotools")
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes(case.results)
        cocoeval_class = COCOeval if case.max_dets is None else COCOevalMaxDets
        coco_eval = cocoeval_class(coco_gt, coco_dt, case.iou_type)
        if case.max_dets is not None:
            coco_eval.params.maxDets = case.max_dets
        coco_eval.evaluate()
        coco_eval.accumulate()
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        coco_eval.summarize()
    return printed.getvalue().splitlines(), coco_eval.stats


@pytest.mark.parametrize("max_dets", [None, [1, 10, 300]])
@pytest.mark.parametrize("areas", [("small", "medium", "large"), ("large",)])
def test_summary_lines_match_pycocotools(max_dets, areas, tmp_path):
    case = synthetic_coco.perfect_detector(first_ann_id=1, areas=areas)
    case.max_dets = max_dets
    # Not a perfect detector: drop some detections so that the numbers differ per line.
    case.results = case.results[::2]
    gt_path = case.write_gt(tmp_path / "gt.json")
    printed, stats = pycocotools_summary(case, gt_path)
    assert len(printed) == 12
    if areas == ("large",):
        assert stats[3] == -1.0  # "-1.000" lines: no small objects
    assert summary_lines(stats, max_dets or [1, 10, 100]) == printed
    hot = evaluate(case, "hotcoco", gt_path)
    assert summary_lines(summary_stats(hot), max_dets or [1, 10, 100]) == printed

    # evaluate_on_coco prints the same lines.
    captured = io.StringIO()
    with contextlib.redirect_stdout(captured):
        evaluate_on_coco(
            load_coco_gt(gt_path, "hotcoco"), case.results, "bbox", "hotcoco",
            max_dets_per_image=max_dets,
        )  # fmt: skip
    assert captured.getvalue().splitlines() == printed


def test_summary_lines_wants_12_numbers():
    with pytest.raises(ValueError, match="12 bbox/segm summary numbers, got 10"):
        summary_lines(np.zeros(10), [1, 10, 100])


def test_resolve_backend(monkeypatch):
    assert coco_backend.hotcoco_available()  # hotcoco is a requirement
    assert resolve_backend("auto") == "hotcoco"
    assert resolve_backend("hotcoco") == "hotcoco"
    assert resolve_backend("pycocotools") == "pycocotools"
    with pytest.raises(
        ValueError, match=r"one of \('auto', 'hotcoco', 'pycocotools'\), got 'rust'"
    ):
        resolve_backend("rust")

    monkeypatch.setattr(coco_backend, "hotcoco_available", lambda: False)
    assert resolve_backend("auto") == "pycocotools"
    with pytest.raises(ImportError, match="'hotcoco' was requested but hotcoco is not installed"):
        resolve_backend("hotcoco")


def test_evaluate_on_coco_errors(tmp_path):
    case = synthetic_coco.perfect_detector(first_ann_id=1)
    gt_path = case.write_gt(tmp_path / "gt.json")
    for backend in BOTH:
        with pytest.raises(ValueError, match="at least one result"):
            evaluate_on_coco(load_coco_gt(gt_path, backend), [], "bbox", backend)
    gt = load_coco_gt(gt_path, "hotcoco")
    with pytest.raises(ValueError, match="'hotcoco' or 'pycocotools', got 'auto'"):
        evaluate_on_coco(gt, case.results, "bbox", "auto")
    with pytest.raises(ValueError, match="at least 3 values, got \\[1, 10\\]"):
        evaluate_on_coco(gt, case.results, "bbox", "hotcoco", max_dets_per_image=[1, 10])
    with pytest.raises(ValueError, match="iou_type='keypoints'"):
        evaluate_on_coco(gt, case.results, "keypoints", "hotcoco")


@pytest.mark.parametrize("backend", BOTH)
def test_the_callers_results_are_left_as_they_were(backend, tmp_path):
    """``evaluate_on_coco`` copies each result before the loaders add ``id`` / ``area`` or it
    drops ``bbox`` for ``segm``: the evaluator writes and reuses the same list."""
    case = synthetic_coco.masks("segm")
    gt_path = case.write_gt(tmp_path / "gt.json")
    before = copy.deepcopy(case.results)
    evaluate(case, backend, gt_path)
    assert case.results == before and all("bbox" in r for r in case.results)
