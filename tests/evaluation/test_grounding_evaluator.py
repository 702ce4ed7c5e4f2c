"""GroundingEvaluator on hand-made ground truth and predictions, recalls computed by hand."""

from __future__ import annotations

import logging
import math

import pytest
import torch
from detectron2.data import DatasetCatalog
from detectron2.structures import Boxes, BoxMode, Instances

from detr_ext.evaluation import GroundingEvaluator

DATASET = "detr_ext_test_grounding_evaluator"


def _annotation(phrase, box, mode=BoxMode.XYXY_ABS, iscrowd=0):
    return {"category_id": phrase, "bbox": box, "bbox_mode": mode, "iscrowd": iscrowd}


# Image 1, prompt "red circle . blue square . green triangle .": two red circles, one blue
# square, no green triangle (a negative). Image 2: one red circle given as XYWH
# ([10, 10, 20, 20] is the XYXY box [10, 10, 30, 30]), one blue square, and a crowd region of
# phrase 3. Image 3: never evaluated below unless asked.
RECORDS = [
    {
        "image_id": 1,
        "prompt": "red circle . blue square . green triangle .",
        "annotations": [
            _annotation(0, [0, 0, 10, 10]),
            _annotation(0, [50, 50, 70, 70]),
            _annotation(1, [100, 100, 140, 140]),
        ],
    },
    {
        "image_id": 2,
        "prompt": "red circle . blue square . yellow circle . purple square .",
        "annotations": [
            _annotation(0, [10, 10, 20, 20], BoxMode.XYWH_ABS),
            _annotation(1, [100, 100, 120, 120]),
            _annotation(3, [0, 0, 50, 50], iscrowd=1),
        ],
    },
    {"image_id": 3, "prompt": "red circle .", "annotations": [_annotation(0, [0, 0, 5, 5])]},
]
MISS = [200.0, 200.0, 210.0, 210.0]


def _instances(detections):
    """detections: list of (phrase, xyxy box, score)."""
    instances = Instances((300, 300))
    boxes = [box for _, box, _ in detections]
    instances.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    instances.scores = torch.tensor([score for _, _, score in detections], dtype=torch.float32)
    instances.pred_classes = torch.tensor([phrase for phrase, _, _ in detections])
    return instances


# (image 1, phrase 0): the best box misses, the second hits the second circle -> R@5 only.
# The hit is listed first but scores lower: ranking is by score, not by list order.
# (image 1, phrase 1): a box of IoU exactly 0.5 (half the square) ranks first -> R@1 (an exact
# box ranks second: the first hit counts).
# (image 1, phrase 2): no ground truth; its confident exact-looking box is ignored.
# (image 2, phrase 0): found only through the XYWH -> XYXY conversion, at rank 1 -> R@1.
# (image 2, phrase 1): its only hit is the 6th best box -> a miss at 1 and 5, a hit at 10.
# (image 2, phrase 3): a crowd region only: not a phrase to find; the hit on it is ignored.
PREDICTIONS = {
    1: [
        (0, [50, 50, 70, 70], 0.6),
        (0, MISS, 0.9),
        (1, [100, 100, 140, 120], 0.7),
        (1, [100, 100, 140, 140], 0.05),
        (2, [0, 0, 10, 10], 0.99),
    ],
    2: [
        (0, [10, 10, 30, 30], 0.5),
        *[(1, MISS, 0.9 - 0.01 * i) for i in range(5)],
        (1, [100, 100, 120, 120], 0.1),
        (3, [0, 0, 50, 50], 0.8),
    ],
}
# Four (image, phrase) pairs: hits at rank 1 for two, rank 2 for one, rank 6 for one.
EXPECTED = {"R@1": 50.0, "R@5": 75.0, "num_phrases": 4}


@pytest.fixture(autouse=True)
def registered_dataset():
    if DATASET in DatasetCatalog.list():
        DatasetCatalog.remove(DATASET)
    DatasetCatalog.register(DATASET, lambda: [dict(r) for r in RECORDS])
    yield
    DatasetCatalog.remove(DATASET)


def _evaluate(evaluator, predictions):
    evaluator.reset()
    for image_id, detections in predictions.items():
        evaluator.process([{"image_id": image_id}], [{"instances": _instances(detections)}])
    return evaluator.evaluate()


def test_recall_at_k_hand_computed():
    assert _evaluate(GroundingEvaluator(DATASET), PREDICTIONS) == {"grounding": EXPECTED}


def test_more_ranks_and_a_stricter_threshold():
    evaluator = GroundingEvaluator(DATASET, iou_threshold=0.6, top_k=(10, 1, 5))
    # At IoU 0.6 the half square of (image 1, phrase 1) no longer hits; its exact box, second,
    # does: that pair moves from R@1 to R@5.
    assert _evaluate(evaluator, PREDICTIONS)["grounding"] == {
        "R@1": 25.0,
        "R@5": 75.0,
        "R@10": 100.0,
        "num_phrases": 4,
    }


def test_phrases_without_detections_are_misses_and_unseen_images_are_skipped():
    predictions = {1: [(1, [100, 100, 140, 140], 0.5)]}  # image 1 only; no red circle found
    results = _evaluate(GroundingEvaluator(DATASET, distributed=False), predictions)
    assert results["grounding"] == {"R@1": 50.0, "R@5": 50.0, "num_phrases": 2}


def test_batched_process_and_reset():
    evaluator = GroundingEvaluator(DATASET)
    evaluator.reset()
    evaluator.process(
        [{"image_id": 1}, {"image_id": 2}],
        [{"instances": _instances(PREDICTIONS[1])}, {"instances": _instances(PREDICTIONS[2])}],
    )
    assert evaluator.evaluate() == {"grounding": EXPECTED}
    evaluator.reset()
    assert evaluator.evaluate() == {}


def test_logs_a_table(caplog):
    with caplog.at_level(logging.INFO, logger="detr_ext.evaluation.grounding"):
        _evaluate(GroundingEvaluator(DATASET), PREDICTIONS)
    assert "R@1" in caplog.text and "50.000" in caplog.text and "2 images" in caplog.text


def test_image_without_ground_truth_phrases_gives_nan():
    DatasetCatalog.remove(DATASET)
    DatasetCatalog.register(DATASET, lambda: [{"image_id": 7, "annotations": []}])
    results = _evaluate(GroundingEvaluator(DATASET), {7: [(0, MISS, 0.5)]})["grounding"]
    assert math.isnan(results["R@1"]) and results["num_phrases"] == 0


def test_unknown_image_raises_with_its_id():
    with pytest.raises(KeyError, match="image_id 42.*does not contain"):
        _evaluate(GroundingEvaluator(DATASET), {42: [(0, MISS, 0.5)]})


def test_outputs_without_instances_raise():
    evaluator = GroundingEvaluator(DATASET)
    with pytest.raises(KeyError, match=r"outputs\[1\] \(image_id 2\) has no 'instances'"):
        evaluator.process(
            [{"image_id": 1}, {"image_id": 2}],
            [{"instances": _instances(PREDICTIONS[1])}, {"sem_seg": torch.zeros(1)}],
        )
    incomplete = Instances((10, 10), pred_boxes=Boxes(torch.zeros(0, 4)))
    with pytest.raises(KeyError, match=r"lacks \['scores', 'pred_classes'\]"):
        evaluator.process([{"image_id": 1}], [{"instances": incomplete}])
    with pytest.raises(KeyError, match="has no 'image_id'"):
        evaluator.process([{}], [{"instances": _instances([])}])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"iou_threshold": 0.0}, "iou_threshold must be in"),
        ({"top_k": ()}, "top_k must be a non-empty"),
        ({"top_k": (0, 1)}, "top_k must be a non-empty"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GroundingEvaluator(DATASET, **kwargs)
