"""detr_ext.evaluation.COCOEvaluator end to end: detectron2 ``Instances`` in, the same results,
files and copypaste lines out of either backend; the error analysis files; the evaluator's
and ``--analyze``'s errors. ``tools/train_net.py --analyze`` is tested in
``tests/engine/test_train_net_analyze.py``."""

from __future__ import annotations

import json
import logging
import math
import uuid
from pathlib import Path

import pytest
import torch
from detectron2.config import LazyCall as L
from detectron2.config import LazyConfig
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances
from detectron2.evaluation import COCOEvaluator as D2COCOEvaluator
from detectron2.evaluation import DatasetEvaluators
from detectron2.evaluation.testing import print_csv_format
from detectron2.structures import Boxes, Instances
from PIL import Image

from detr_ext.engine import build_evaluator, request_error_analysis
from detr_ext.evaluation import COCOEvaluator
from detr_ext.evaluation.analysis import TIDE_ERRORS
from tests.tool_runs import REPO_ROOT

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools.*")

# Non-contiguous dataset ids: the model predicts 0, 1, 2 and the evaluator must map them back.
CATEGORIES = [
    {"id": 5, "name": "circle"},
    {"id": 10, "name": "square"},
    {"id": 20, "name": "triangle"},
]
SIZE = 200
# Ground truth per image, XYWH: image 1 a small circle and a medium square, image 2 a large
# triangle, image 3 a medium circle (never detected), image 4 nothing.
GROUND_TRUTH = {
    1: [(5, [10, 10, 20, 20]), (10, [60, 60, 50, 50])],
    2: [(20, [20, 20, 120, 100])],
    3: [(5, [30, 30, 50, 50])],
    4: [],
}
# Predictions per image: (contiguous class, XYWH, score). The square is detected exactly but
# called a triangle; image 3 has no detections; image 4 one on background.
PREDICTIONS = {
    1: [(0, [10, 10, 20, 20], 0.9), (2, [60, 60, 50, 50], 0.95)],
    2: [(2, [20, 20, 120, 100], 0.8)],
    3: [],
    4: [(0, [100, 100, 40, 40], 0.1)],
}
# What COCO's rules give for them (AP in points): circle found 1 of 2 (precision 1 up to recall
# 0.5: 51 of 101 recall points), square never found, triangle found after a false positive
# (precision 0.5); every box is exact, so AP = AP50 = AP75. Small: only the circle (found);
# medium: circle 3 and the square (both missed); large: the triangle (found).
AP_CIRCLE = 100 * 51 / 101
EXPECTED = {
    "AP": (AP_CIRCLE + 0 + 50) / 3,
    "AP50": (AP_CIRCLE + 0 + 50) / 3,
    "AP75": (AP_CIRCLE + 0 + 50) / 3,
    "APs": 100.0,
    "APm": 0.0,
    "APl": 100.0,
    "AP-circle": AP_CIRCLE,
    "AP-square": 0.0,
    "AP-triangle": 50.0,
}


def write_dataset_json(path: Path) -> None:
    images, annotations = [], []
    for image_id, objects in GROUND_TRUTH.items():
        images.append(
            {"id": image_id, "file_name": f"{image_id}.jpg", "height": SIZE, "width": SIZE}
        )
        for category_id, box in objects:
            annotations.append(
                {"id": len(annotations) + 1, "image_id": image_id, "category_id": category_id,
                 "bbox": box, "area": box[2] * box[3], "iscrowd": 0}
            )  # fmt: skip
    path.write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": CATEGORIES})
    )


@pytest.fixture
def dataset_name(tmp_path):
    """A registered 4-image COCO-format dataset, loaded once (as a test loader would, which
    fills in the metadata's class names and id mapping); removed afterwards."""
    name = f"eval_test_{uuid.uuid4().hex[:8]}"
    json_file = tmp_path / "instances.json"
    write_dataset_json(json_file)
    register_coco_instances(name, {}, str(json_file), str(tmp_path))
    DatasetCatalog.get(name)
    yield name
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


def model_io(image_id: int) -> tuple[dict, dict]:
    """The input dict and the model output for ``image_id``, as detectron2 passes them to an
    evaluator: ``Instances`` with absolute XYXY ``pred_boxes``, ``scores``, ``pred_classes``."""
    detections = PREDICTIONS[image_id]
    instances = Instances((SIZE, SIZE))
    boxes = [[x, y, x + w, y + h] for _, (x, y, w, h), _ in detections]
    instances.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    instances.scores = torch.tensor([score for *_, score in detections], dtype=torch.float32)
    instances.pred_classes = torch.tensor([c for c, *_ in detections], dtype=torch.int64)
    return {"image_id": image_id, "height": SIZE, "width": SIZE}, {"instances": instances}


def run_evaluator(evaluator: COCOEvaluator) -> dict:
    evaluator.reset()
    for image_id in PREDICTIONS:
        inputs, outputs = model_io(image_id)
        evaluator.process([inputs], [outputs])
    return evaluator.evaluate()


class CopypasteLines(logging.Handler):
    """Collects what ``print_csv_format`` logs."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def copypaste_lines(results: dict) -> list[str]:
    logger = logging.getLogger("detectron2.evaluation.testing")
    handler, level = CopypasteLines(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        print_csv_format(results)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    return handler.lines


def test_backends_give_the_same_results(dataset_name, tmp_path):
    results, files, lines = {}, {}, {}
    for backend in ("hotcoco", "pycocotools"):
        output_dir = tmp_path / backend
        evaluator = COCOEvaluator(
            dataset_name, distributed=False, output_dir=str(output_dir), backend=backend
        )
        assert evaluator.backend == backend
        results[backend] = run_evaluator(evaluator)
        files[backend] = json.loads((output_dir / "coco_instances_results.json").read_text())
        lines[backend] = copypaste_lines(results[backend])
        assert not (output_dir / "analysis").exists()  # analyze defaults to False

    hot, pyc = results["hotcoco"]["bbox"], results["pycocotools"]["bbox"]
    assert list(hot) == list(pyc) == list(EXPECTED)
    for key, expected in EXPECTED.items():
        assert hot[key] == pytest.approx(expected, abs=1e-9), (key, hot[key])
        assert hot[key] == pyc[key] or (math.isnan(hot[key]) and math.isnan(pyc[key])), key

    assert files["hotcoco"] == files["pycocotools"]
    assert sorted({r["category_id"] for r in files["hotcoco"]}) == [5, 20]  # dataset ids
    assert len(files["hotcoco"]) == sum(len(d) for d in PREDICTIONS.values())

    assert lines["hotcoco"] == lines["pycocotools"]
    assert lines["hotcoco"][:2] == ["copypaste: Task: bbox", "copypaste: AP,AP50,AP75,APs,APm,APl"]
    ap = f"{EXPECTED['AP']:.4f}"
    assert lines["hotcoco"][2] == f"copypaste: {ap},{ap},{ap},100.0000,0.0000,100.0000"


@pytest.mark.parametrize("backend", ["hotcoco", "pycocotools"])
def test_analysis_files(backend, dataset_name, tmp_path):
    evaluator = COCOEvaluator(
        dataset_name, distributed=False, output_dir=str(tmp_path), backend=backend, analyze=True
    )
    results = run_evaluator(evaluator)
    assert results["bbox"]["AP"] == pytest.approx(EXPECTED["AP"], abs=1e-9)

    analysis_dir = tmp_path / "analysis"
    tide = json.loads((analysis_dir / "bbox_tide.json").read_text())
    assert {"ap_base", "delta_ap"} <= set(tide)
    assert set(tide["delta_ap"]) == set(TIDE_ERRORS)
    # The square called a triangle is TIDE's classification error, and the only one.
    assert tide["counts"]["Cls"] == 1
    assert tide["counts"]["Miss"] == 1  # the circle of image 3

    confusion = json.loads((analysis_dir / "bbox_confusion.json").read_text())
    assert confusion["cat_ids"] == [c["id"] for c in CATEGORIES]
    # Rows: true class, then BG (false positives); columns: predicted class, then BG (missed).
    assert confusion["matrix"] == [
        [1, 0, 0, 1],  # circles: one found, one missed
        [0, 0, 1, 0],  # the square, predicted as a triangle
        [0, 0, 1, 0],  # the triangle
        [1, 0, 0, 0],  # the circle predicted on background
    ]

    png = analysis_dir / "bbox_analysis.png"
    with Image.open(png) as image:
        assert image.format == "PNG"
        assert image.width > 0 and image.height > 0
        image.verify()


# Detections of classes the dataset lacks (it has classes 0, 1, 2), as a model with
# model.num_classes=6 gives: exact copies of ground-truth boxes, an overlapping and a
# background one, all scored above every real detection.
EXTRA_DETECTIONS = {
    1: [(3, [10, 10, 20, 20], 0.99), (5, [60, 60, 50, 50], 0.98)],
    2: [(4, [20, 20, 120, 100], 0.97), (3, [25, 25, 100, 90], 0.96)],
    3: [(3, [30, 30, 50, 50], 0.99)],
    4: [(5, [0, 0, 5, 5], 0.99)],
}


def model_io_with_extra_classes(image_id: int) -> tuple[dict, dict]:
    """:func:`model_io` plus the detections of :data:`EXTRA_DETECTIONS` for ``image_id``."""
    inputs, outputs = model_io(image_id)
    extra = Instances((SIZE, SIZE))
    detections = EXTRA_DETECTIONS[image_id]
    boxes = [[x, y, x + w, y + h] for _, (x, y, w, h), _ in detections]
    extra.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32))
    extra.scores = torch.tensor([score for *_, score in detections], dtype=torch.float32)
    extra.pred_classes = torch.tensor([c for c, *_ in detections], dtype=torch.int64)
    outputs["instances"] = Instances.cat([outputs["instances"], extra])
    return inputs, outputs


@pytest.mark.parametrize("backend", ["hotcoco", "pycocotools"])
def test_predictions_of_classes_the_dataset_lacks_are_left_out_with_a_warning(
    backend, dataset_name, tmp_path, caplog
):
    """model.num_classes may exceed the dataset's categories (check_num_classes allows it):
    predictions of the extra classes leave the metrics, the error analysis and the results
    file as they are without them, and one warning says how many there were, of which
    classes. (This raised "a prediction has class 3, but the dataset ... has 3 classes".)"""
    expected_dir, extra_dir = tmp_path / "expected", tmp_path / "extra"
    expected = run_evaluator(
        COCOEvaluator(dataset_name, distributed=False, output_dir=str(expected_dir),
                      backend=backend, analyze=True)
    )  # fmt: skip
    evaluator = COCOEvaluator(
        dataset_name, distributed=False, output_dir=str(extra_dir), backend=backend, analyze=True
    )
    evaluator.reset()
    for image_id in PREDICTIONS:
        inputs, outputs = model_io_with_extra_classes(image_id)
        evaluator.process([inputs], [outputs])
    with caplog.at_level(logging.INFO, logger="detr_ext.evaluation.coco_evaluator"):
        results = evaluator.evaluate()

    assert results == expected
    for name in ("coco_instances_results.json", "analysis/bbox_tide.json",
                 "analysis/bbox_confusion.json"):  # fmt: skip
        assert json.loads((extra_dir / name).read_text()) == json.loads(
            (expected_dir / name).read_text()
        ), name
    warnings = [
        r for r in caplog.records
        if r.levelno == logging.WARNING and r.name == "detr_ext.evaluation.coco_evaluator"
    ]  # fmt: skip
    assert len(warnings) == 1
    message = warnings[0].getMessage()
    total = sum(len(d) for d in PREDICTIONS.values()) + 6
    assert f"left out 6 of {total} predictions on {dataset_name!r}" in message
    assert "whose class (3, 4, 5) is not one of the dataset's 3 categories" in message
    assert "model.num_classes is larger than the dataset's number of categories" in message


def test_extra_classes_are_counted_over_all_processes(dataset_name, monkeypatch, caplog):
    """Distributed evaluation: the predictions of every process are gathered to the main one
    before they are mapped, so the warning counts those of the whole test set (here two
    "processes" with 3 and 3 such predictions, gathered by a stand-in for ``comm.gather``)."""
    from detectron2.evaluation import coco_evaluation

    per_rank = []
    for images in ((1, 2), (3, 4)):
        evaluator = COCOEvaluator(dataset_name, distributed=True, backend="hotcoco")
        evaluator.reset()
        for image_id in images:
            inputs, outputs = model_io_with_extra_classes(image_id)
            evaluator.process([inputs], [outputs])
        per_rank.append(evaluator._predictions)
    monkeypatch.setattr(coco_evaluation.comm, "gather", lambda data, dst=0: per_rank)
    monkeypatch.setattr(coco_evaluation.comm, "is_main_process", lambda: True)
    expected = run_evaluator(COCOEvaluator(dataset_name, distributed=False, backend="hotcoco"))
    with caplog.at_level(logging.WARNING, logger="detr_ext.evaluation.coco_evaluator"):
        results = evaluator.evaluate()
    assert results == expected
    assert len(caplog.records) == 1
    assert "left out 6 of" in caplog.records[0].getMessage()


def test_drop_unknown_classes_scores_only_the_dataset_classes(dataset_name, caplog):
    """A things+stuff detector (DETR's panoptic box stage) scored on the things: extra
    detections of an unknown class 3 are dropped and leave the metrics unchanged; expected
    there (drop_unknown_classes=True), so an info line reports them, not a warning."""
    expected = run_evaluator(COCOEvaluator(dataset_name, distributed=False, backend="hotcoco"))
    evaluator = COCOEvaluator(
        dataset_name, distributed=False, backend="hotcoco", drop_unknown_classes=True
    )
    evaluator.reset()
    for image_id in PREDICTIONS:
        inputs, outputs = model_io(image_id)
        instances = outputs["instances"]
        extra = Instances(instances.image_size)
        extra.pred_boxes = Boxes(torch.tensor([[0.0, 0.0, 5.0, 5.0]]))
        extra.scores = torch.tensor([0.99])
        extra.pred_classes = torch.tensor([3])
        outputs["instances"] = Instances.cat([instances, extra])
        evaluator.process([inputs], [outputs])
    with caplog.at_level(logging.INFO, logger="detr_ext.evaluation.coco_evaluator"):
        results = evaluator.evaluate()
    assert results["bbox"] == expected["bbox"]
    reports = [r for r in caplog.records if "left out" in r.getMessage()]
    assert [r.levelno for r in reports] == [logging.INFO]
    assert "left out 4 of 8 predictions" in reports[0].getMessage()
    assert "(drop_unknown_classes=True)" in reports[0].getMessage()


def test_evaluator_argument_errors(dataset_name):
    with pytest.raises(ValueError, match="writes its analysis to output_dir, got output_dir=None"):
        COCOEvaluator(dataset_name, distributed=False, analyze=True)
    with pytest.raises(
        ValueError, match=r"one of \('auto', 'hotcoco', 'pycocotools'\), got 'rust'"
    ):
        COCOEvaluator(dataset_name, distributed=False, backend="rust")


@pytest.fixture
def shapes_config(tmp_path, monkeypatch):
    """configs/common/data/shapes.py loaded (it registers shapes_train/shapes_val, cheaply:
    nothing is generated); the registration removed afterwards."""
    monkeypatch.setenv("DETR_EXT_DATASETS", str(tmp_path / "datasets"))
    cfg = LazyConfig.load(str(REPO_ROOT / "configs" / "common" / "data" / "shapes.py"))
    yield cfg
    for name in ("shapes_train", "shapes_val"):
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)


def test_request_error_analysis(shapes_config):
    assert shapes_config.dataloader.evaluator.analyze is False
    request_error_analysis(shapes_config)
    assert shapes_config.dataloader.evaluator.analyze is True

    shapes_config.dataloader.evaluator = L(D2COCOEvaluator)(dataset_name="shapes_val")
    with pytest.raises(ValueError, match="detectron2.evaluation.coco_evaluation.COCOEvaluator"):
        request_error_analysis(shapes_config)
    del shapes_config.dataloader.evaluator
    with pytest.raises(ValueError, match="--analyze needs dataloader.evaluator"):
        request_error_analysis(shapes_config)


def test_evaluator_lists(shapes_config, tmp_path):
    """A list of evaluators (box/mask AP + PQ in the panoptic configs): ``--analyze`` reaches
    the entries that take it, and each entry that takes an output_dir writes under the run's."""
    shapes_config.dataloader.evaluator.dataset_name = "shapes_val"
    shapes_config.dataloader.evaluator = [
        shapes_config.dataloader.evaluator,
        L(D2COCOEvaluator)(dataset_name="shapes_val", output_dir="elsewhere"),
    ]
    request_error_analysis(shapes_config)
    assert shapes_config.dataloader.evaluator[0].analyze is True
    assert "analyze" not in shapes_config.dataloader.evaluator[1]

    DatasetCatalog.get("shapes_val")  # generates the val split, fills the metadata
    evaluators = build_evaluator(shapes_config, str(tmp_path / "inference"))
    assert isinstance(evaluators, DatasetEvaluators)
    first, second = evaluators._evaluators
    assert isinstance(first, COCOEvaluator) and type(second) is D2COCOEvaluator
    assert first._output_dir == second._output_dir == str(tmp_path / "inference")
    assert shapes_config.dataloader.evaluator[1].output_dir == "elsewhere"  # config unchanged

    shapes_config.dataloader.evaluator = [L(D2COCOEvaluator)(dataset_name="shapes_val")]
    with pytest.raises(ValueError, match="or a list holding one"):
        request_error_analysis(shapes_config)
