"""tools/benchmark_coco_eval.py on a tiny synthetic set, and the corners of that set's
generator (detr_ext.evaluation.synthetic)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_util

from detr_ext.evaluation.coco_backend import evaluate_on_coco, load_coco_gt, summary_stats
from detr_ext.evaluation.synthetic import COCO_CATEGORY_IDS, generate_coco_set
from tests.tool_runs import load_script

REPO = Path(__file__).resolve().parents[2]
benchmark_coco_eval = load_script("tools/benchmark_coco_eval.py")


def _polygon_area(flat: list[float]) -> float:
    x, y = np.asarray(flat[0::2]), np.asarray(flat[1::2])
    return abs(float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y))) / 2


def test_tiny_run_times_both_backends_and_finds_equal_stats(tmp_path):
    out = tmp_path / "coco_eval.json"
    # In a fresh process, as users run it: the tool forks its measuring processes, and a fork
    # of this pytest process (where earlier tests started hotcoco's thread pool) can deadlock.
    run = subprocess.run(
        [sys.executable, str(REPO / "tools" / "benchmark_coco_eval.py"),
         "--num-images", "20", "--dets-per-image", "10", "--output", str(out),
         "--work-dir", str(tmp_path / "data")],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr[-4000:]
    result = json.loads(out.read_text())
    (gt_json,) = (tmp_path / "data").glob("synthetic_gt_*.json")
    (results_json,) = (tmp_path / "data").glob("synthetic_results_*.json")
    results = json.loads(results_json.read_text())
    assert result["equal"] is True
    assert set(result["results"]) == {"bbox", "segm"}
    for iou_type, entry in result["results"].items():
        for backend in ("pycocotools", "hotcoco"):
            row = entry[backend]
            assert row["load_median_s"] > 0 and row["evaluate_median_s"] > 0, (iou_type, backend)
            assert row["evaluator"].split(".")[0] == backend
        comparison = entry["comparison"]
        for backend in ("pycocotools", "hotcoco"):  # the numbers are each backend's own
            coco_gt = load_coco_gt(gt_json, backend)
            coco_eval = evaluate_on_coco(coco_gt, results, iou_type, backend, print_summary=False)
            assert entry[backend]["stats"] == summary_stats(coco_eval).tolist(), (iou_type, backend)
        assert entry["pycocotools"]["stats"] == entry["hotcoco"]["stats"], iou_type
        assert comparison["max_abs_diff"] == 0.0 and comparison["precision_max_abs_diff"] == 0.0
        assert comparison["precision_shapes"] == [[10, 101, 80, 4, 3]] * 2
        # A detector that finds most objects: the comparison is not one of zeros.
        assert 0.1 < comparison["stats"]["AP50"]["pycocotools"] < 1.0, comparison["stats"]
    assert result["dataset"]["images"] == 20 and result["dataset"]["detections"] == 200
    env = result["environment"]
    assert env["pycocotools"] and env["hotcoco"] and env["cores"] >= 1 and env["commit"]
    markdown = out.with_suffix(".md").read_text()
    assert "| segm | hotcoco |" in markdown and "## bbox: summary numbers" in markdown
    # What the backends read is the generator's set, written once.
    synthetic = generate_coco_set(20, 10, seed=0)
    assert json.loads(gt_json.read_text()) == synthetic.gt and results == synthetic.results


def test_generator_covers_coco_corners():
    synthetic = generate_coco_set(num_images=20, dets_per_image=10, seed=0)
    gt, results = synthetic.gt, synthetic.results
    images = {image["id"]: image for image in gt["images"]}
    annotations = gt["annotations"]

    assert len(images) == 20
    assert set(images) - {a["image_id"] for a in annotations}, "an image without objects"
    cat_ids = [c["id"] for c in gt["categories"]]
    assert cat_ids == list(COCO_CATEGORY_IDS) and len(cat_ids) == 80 and max(cat_ids) == 90
    assert set(range(1, 91)) - set(cat_ids) == {12, 26, 29, 30, 45, 66, 68, 69, 71, 83}
    assert {a["category_id"] for a in annotations} <= set(cat_ids)
    assert all(a["id"] >= 1 for a in annotations)

    areas = np.array([a["area"] for a in annotations])
    assert (areas < 32**2).any() and ((areas >= 32**2) & (areas < 96**2)).any()
    assert (areas >= 96**2).any()

    crowd = [a for a in annotations if a["iscrowd"]]
    assert crowd, "a crowd region"
    for ann in annotations:
        image = images[ann["image_id"]]
        if ann["iscrowd"]:
            # COCO's crowd format: uncompressed RLE, area = its pixel count.
            segm = ann["segmentation"]
            assert isinstance(segm["counts"], list)
            assert segm["size"] == [image["height"], image["width"]]
            rle = mask_util.frPyObjects(segm, *segm["size"])
            assert float(mask_util.area(rle)) == ann["area"]
            continue
        (polygon,) = ann["segmentation"]
        assert ann["area"] == pytest.approx(_polygon_area(polygon), abs=1e-6)
        xs, ys = polygon[0::2], polygon[1::2]
        assert ann["bbox"] == pytest.approx(
            [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)], abs=0.011
        )
        assert 0 <= min(xs) and max(xs) <= image["width"]
        assert 0 <= min(ys) and max(ys) <= image["height"]

    per_image = np.bincount([list(images).index(r["image_id"]) for r in results], minlength=20)
    assert (per_image == 10).all()
    for result in results[:50]:
        segm = result["segmentation"]
        assert isinstance(segm["counts"], str)
        image = images[result["image_id"]]
        assert segm["size"] == [image["height"], image["width"]]
        assert mask_util.area(dict(segm, counts=segm["counts"].encode())) > 0

    again = generate_coco_set(num_images=20, dets_per_image=10, seed=0)
    assert again.gt == gt and again.results == results
    assert generate_coco_set(num_images=20, dets_per_image=10, seed=1).gt != gt


@pytest.mark.parametrize(
    "option", ["--num-images", "--dets-per-image", "--repeats", "--hotcoco-threads"]
)
def test_bad_counts_are_usage_errors(option, capsys):
    with pytest.raises(SystemExit) as info:
        benchmark_coco_eval.main([option, "0"])
    assert info.value.code == 2
    assert f"{option}: expected an integer >= 1, got '0'" in capsys.readouterr().err


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="num_images >= 1"):
        generate_coco_set(num_images=0)
