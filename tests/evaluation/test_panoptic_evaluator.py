"""detr_ext.evaluation.COCOPanopticEvaluator (hotcoco, no panopticapi) on a tiny COCO panoptic
dataset written here: PQ / SQ / RQ against values worked out by hand, for model outputs with
``segments_info`` and in the ``label_divisor`` form; no segments; the logged table; id2rgb; the
error without hotcoco."""

from __future__ import annotations

import json
import logging
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_panoptic
from PIL import Image

from detr_ext.evaluation import COCOPanopticEvaluator, id2rgb

SIZE = 8
# Dataset ids with a stuff category between the things: the unified contiguous order (sorted
# by id) is a=0, sky=1, b=2, so the things' contiguous ids are 0 and 2, not 0 and 1.
CATEGORIES = [
    {"id": 4, "name": "a", "isthing": 1, "color": [220, 20, 60]},
    {"id": 6, "name": "sky", "isthing": 0, "color": [70, 130, 180]},
    {"id": 9, "name": "b", "isthing": 1, "color": [0, 0, 142]},
]
A, SKY, B = 0, 1, 2  # contiguous ids
METADATA = {  # as detectron2's "standard" (unified) register_coco_panoptic metadata
    "thing_classes": ["a", "b"],
    "stuff_classes": ["a", "sky", "b"],
    "thing_dataset_id_to_contiguous_id": {4: A, 9: B},
    "stuff_dataset_id_to_contiguous_id": {4: A, 6: SKY, 9: B},
}


def rectangle(rows: tuple[int, int], cols: tuple[int, int]) -> np.ndarray:
    """An ``[8, 8]`` bool mask, True on rows ``[r0, r1)`` and columns ``[c0, c1)``."""
    mask = np.zeros((SIZE, SIZE), dtype=bool)
    mask[rows[0] : rows[1], cols[0] : cols[1]] = True
    return mask


# Ground truth per image: (segment id, dataset category id, iscrowd, mask). Pixels left out
# are void (id 0).
GROUND_TRUTH = {
    # Image 1: a top left (16 px), b top right (16 px), sky rows 4-6 (24 px), row 7 void.
    1: [
        (1, 4, 0, rectangle((0, 4), (0, 4))),
        (2, 9, 0, rectangle((0, 4), (4, 8))),
        (3, 6, 0, rectangle((4, 7), (0, 8))),
    ],
    # Image 2: a top left, b top right, a crowd region of b bottom right, sky bottom left.
    2: [
        (1, 4, 0, rectangle((0, 4), (0, 4))),
        (2, 9, 0, rectangle((0, 4), (4, 8))),
        (3, 9, 1, rectangle((4, 8), (4, 8))),
        (4, 6, 0, rectangle((4, 8), (0, 4))),
    ],
}
# Model outputs per image: (segment id, contiguous category id, isthing, mask). Ids above 255
# need the G and B channels of the PNG.
PREDICTIONS = {
    1: [
        # a: 12 px inside gt a (16 px): IoU 12 / 16 = 0.75 -> true positive.
        (300, A, True, rectangle((0, 4), (0, 3))),
        # b: rows 0-1 of gt b, 8 px: IoU 8 / 16 = 0.5 exactly -> NOT a match (IoU > 0.5 is):
        # one false positive and one false negative for b.
        (70000, B, True, rectangle((0, 2), (4, 8))),
        # a on gt b's rows 2-3, 8 px, no void: a false positive for a.
        (5, A, True, rectangle((2, 4), (4, 8))),
        # sky: rows 4-7, 32 px, of which 24 on gt sky and 8 on void. Void pixels leave the
        # union: 24 / (32 + 24 - 24 - 8) = 1.0 -> true positive with IoU 1.
        (1027, SKY, False, rectangle((4, 8), (0, 8))),
    ],
    2: [
        # a: rows 0-4, 20 px, 16 on gt a: IoU 16 / (20 + 16 - 16) = 0.8 -> true positive.
        (300, A, True, rectangle((0, 5), (0, 4))),
        # b: rows 1-3 of gt b, 12 px: IoU 0.75 -> true positive.
        (70000, B, True, rectangle((1, 4), (4, 8))),
        # b all on the crowd region of b: ignored, not a false positive.
        (9, B, True, rectangle((4, 8), (4, 8))),
        # sky: rows 5-7 of gt sky, 12 px: IoU 12 / 16 = 0.75 -> true positive.
        (1027, SKY, False, rectangle((5, 8), (0, 4))),
    ],
}
# Per category, PQ = sum(IoU of TPs) / (TP + FP/2 + FN/2), SQ = sum(IoU) / TP,
# RQ = TP / (TP + FP/2 + FN/2):
#   a:   TP 2 (0.75, 0.8), FP 1, FN 0: PQ = 1.55 / 2.5 = 0.62,  SQ = 0.775, RQ = 2 / 2.5 = 0.8
#   b:   TP 1 (0.75),      FP 1, FN 1: PQ = 0.75 / 2  = 0.375, SQ = 0.75,  RQ = 1 / 2   = 0.5
#   sky: TP 2 (1.0, 0.75), FP 0, FN 0: PQ = 1.75 / 2  = 0.875, SQ = 0.875, RQ = 1
# Groups average their categories (in percent):
EXPECTED = {
    "PQ": 100 * (0.62 + 0.375 + 0.875) / 3,  # 62.333
    "SQ": 100 * (0.775 + 0.75 + 0.875) / 3,  # 80.0
    "RQ": 100 * (0.8 + 0.5 + 1.0) / 3,  # 76.667
    "PQ_th": 100 * (0.62 + 0.375) / 2,  # 49.75
    "SQ_th": 100 * (0.775 + 0.75) / 2,  # 76.25
    "RQ_th": 100 * (0.8 + 0.5) / 2,  # 65.0
    "PQ_st": 87.5,
    "SQ_st": 87.5,
    "RQ_st": 100.0,
}


def encode_ids(id_map: np.ndarray) -> np.ndarray:
    """COCO panoptic PNG colours written out by hand: R = id % 256, G = id // 256 % 256,
    B = id // 256**2 (independent of the id2rgb under test)."""
    return np.stack([id_map % 256, id_map // 256 % 256, id_map // 65536], axis=-1).astype(np.uint8)


def write_dataset(root: Path) -> tuple[Path, Path, Path]:
    """Images, panoptic PNGs and the panoptic json of GROUND_TRUTH under ``root``."""
    image_dir, png_dir = root / "images", root / "panoptic"
    image_dir.mkdir()
    png_dir.mkdir()
    images, annotations = [], []
    for image_id, segments in GROUND_TRUTH.items():
        id_map = np.zeros((SIZE, SIZE), dtype=np.int64)
        segments_info = []
        for segment_id, category_id, iscrowd, mask in segments:
            id_map[mask] = segment_id
            ys, xs = np.nonzero(mask)
            bbox = [int(xs.min()), int(ys.min()), int(np.ptp(xs)) + 1, int(np.ptp(ys)) + 1]
            segments_info.append(
                {"id": segment_id, "category_id": category_id, "iscrowd": iscrowd,
                 "area": int(mask.sum()), "bbox": bbox}
            )  # fmt: skip
        stem = f"{image_id:06d}"
        Image.new("RGB", (SIZE, SIZE)).save(image_dir / f"{stem}.jpg")
        Image.fromarray(encode_ids(id_map)).save(png_dir / f"{stem}.png")
        images.append({"id": image_id, "file_name": f"{stem}.jpg", "height": SIZE, "width": SIZE})
        annotations.append(
            {"image_id": image_id, "file_name": f"{stem}.png", "segments_info": segments_info}
        )
    json_file = root / "panoptic.json"
    json_file.write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": CATEGORIES})
    )
    return image_dir, png_dir, json_file


@pytest.fixture(scope="module")
def dataset_name(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_panoptic")
    image_dir, png_dir, json_file = write_dataset(root)
    name = f"tiny_panoptic_{uuid.uuid4().hex[:8]}"
    register_coco_panoptic(name, dict(METADATA), str(image_dir), str(png_dir), str(json_file))
    yield name
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


def model_outputs(predictions: dict) -> dict[int, dict]:
    """``{image_id: {"panoptic_seg": (int32 [8, 8] ids, segments_info)}}`` as a model gives."""
    outputs = {}
    for image_id, segments in predictions.items():
        panoptic_seg = torch.zeros((SIZE, SIZE), dtype=torch.int32)
        segments_info = []
        for segment_id, category_id, isthing, mask in segments:
            panoptic_seg[torch.from_numpy(mask)] = segment_id
            segments_info.append({"id": segment_id, "isthing": isthing, "category_id": category_id})
        outputs[image_id] = {"panoptic_seg": (panoptic_seg, segments_info)}
    return outputs


def divisor_outputs(predictions: dict, label_divisor: int) -> dict[int, dict]:
    """The same segments in the form without ``segments_info``: ids
    ``category * label_divisor + instance``, -1 for void."""
    outputs = {}
    for image_id, segments in predictions.items():
        panoptic_seg = torch.full((SIZE, SIZE), -1, dtype=torch.int32)
        for instance, (_, category_id, _, mask) in enumerate(segments):
            panoptic_seg[torch.from_numpy(mask)] = category_id * label_divisor + instance
        outputs[image_id] = {"panoptic_seg": (panoptic_seg, None)}
    return outputs


def evaluate(dataset_name: str, outputs: dict[int, dict], output_dir=None) -> dict:
    evaluator = COCOPanopticEvaluator(dataset_name, output_dir=output_dir)
    evaluator.reset()
    for record in DatasetCatalog.get(dataset_name):  # the data loader's dicts
        evaluator.process([record], [outputs[record["image_id"]]])
    return evaluator.evaluate()


def test_pq_sq_rq_match_the_hand_computed_values(dataset_name, tmp_path):
    outputs = model_outputs(PREDICTIONS)
    results = evaluate(dataset_name, outputs, output_dir=str(tmp_path))
    assert list(results) == ["panoptic_seg"]
    assert list(results["panoptic_seg"]) == list(EXPECTED)
    assert results["panoptic_seg"] == pytest.approx(EXPECTED, abs=1e-9)

    # The written predictions use the dataset's category ids; the model's outputs are unchanged.
    written = json.loads((tmp_path / "predictions.json").read_text())
    first = {s["id"]: s["category_id"] for s in written["annotations"][0]["segments_info"]}
    assert first == {300: 4, 70000: 9, 5: 4, 1027: 6}
    assert all("isthing" in s for s in outputs[1]["panoptic_seg"][1])


def test_label_divisor_form_gives_the_same_values(dataset_name):
    label_divisor = MetadataCatalog.get(dataset_name).label_divisor
    results = evaluate(dataset_name, divisor_outputs(PREDICTIONS, label_divisor))
    assert results["panoptic_seg"] == pytest.approx(EXPECTED, abs=1e-9)


def test_no_predicted_segments_give_zero_pq(dataset_name):
    # Every ground-truth segment is a false negative (the crowd one is ignored): TP = 0 in all
    # three categories, so PQ = SQ = RQ = 0 in every group.
    empty = {image_id: [] for image_id in GROUND_TRUTH}
    results = evaluate(dataset_name, model_outputs(empty))
    assert results["panoptic_seg"] == {key: 0.0 for key in EXPECTED}


def test_logs_detectron2s_table(dataset_name):
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    table_logger = logging.getLogger("detectron2.evaluation.panoptic_evaluation")
    table_logger.addHandler(handler)
    old_level = table_logger.level
    table_logger.setLevel(logging.INFO)
    try:
        evaluate(dataset_name, model_outputs(PREDICTIONS))
    finally:
        table_logger.removeHandler(handler)
        table_logger.setLevel(old_level)
    text = "\n".join(record.getMessage() for record in records)
    assert "Panoptic Evaluation Results:" in text
    rows = {line.split("|")[1].strip(): line for line in text.splitlines() if "|" in line}
    assert "62.333" in rows["All"] and "49.750" in rows["Things"] and "87.500" in rows["Stuff"]


def test_id2rgb_is_r_plus_256g_plus_256_squared_b():
    ids = np.array([[0, 5, 300], [70000, 1027, 256**3 - 1]])
    expected = [
        [[0, 0, 0], [5, 0, 0], [44, 1, 0]],
        [[112, 17, 1], [3, 4, 0], [255, 255, 255]],
    ]
    assert id2rgb(ids).tolist() == expected
    assert id2rgb(ids).dtype == np.uint8
    with pytest.raises(ValueError, match=r"expected segment ids in \[0, 16777216\)"):
        id2rgb(np.array([[-1]]))
    with pytest.raises(TypeError, match="expected an integer array"):
        id2rgb(np.zeros((2, 2), dtype=np.float32))


def test_missing_hotcoco_is_a_clear_import_error(dataset_name, monkeypatch):
    monkeypatch.setitem(sys.modules, "hotcoco", None)  # what find_spec sees without hotcoco
    with pytest.raises(ImportError, match="pip install hotcoco"):
        COCOPanopticEvaluator(dataset_name)


@pytest.fixture
def shapes_panoptic_val(tmp_path):
    """``shapes_panoptic_val`` with 3 images under ``tmp_path``; the registrations found before
    are put back afterwards."""
    from detr_ext.data.datasets import SHAPES_PANOPTIC_DATASET_NAMES, register_shapes_panoptic

    saved = {
        name: (DatasetCatalog[name], MetadataCatalog.get(name).as_dict())
        for name in SHAPES_PANOPTIC_DATASET_NAMES
        if name in DatasetCatalog.list()
    }
    register_shapes_panoptic(root=tmp_path, num_train=1, num_val=3, replace=True)
    yield "shapes_panoptic_val"
    for name in SHAPES_PANOPTIC_DATASET_NAMES:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
        if name in saved:
            loader, metadata = saved[name]
            DatasetCatalog.register(name, loader)
            metadata.pop("name")
            MetadataCatalog.get(name).set(**metadata)


def test_shapes_panoptic_ground_truth_scores_100(shapes_panoptic_val):
    """The bundled panoptic shapes (unified metadata, things circle / square / triangle and the
    stuff background) with their own ground truth as the model's output: every segment is
    matched with IoU 1."""
    evaluator = COCOPanopticEvaluator(shapes_panoptic_val)
    evaluator.reset()
    for record in DatasetCatalog.get(shapes_panoptic_val):
        color = np.asarray(Image.open(record["pan_seg_file_name"]).convert("RGB"), dtype=np.int64)
        segment_ids = color[..., 0] + 256 * color[..., 1] + 256**2 * color[..., 2]
        segments_info = [
            {"id": s["id"], "category_id": s["category_id"], "isthing": s["isthing"]}
            for s in record["segments_info"]
        ]
        output = {"panoptic_seg": (torch.from_numpy(segment_ids).int(), segments_info)}
        evaluator.process([record], [output])
    assert evaluator.evaluate()["panoptic_seg"] == {key: 100.0 for key in EXPECTED}


# Segments of classes the dataset lacks (it has 0, 1, 2), as a model with model.num_classes=6
# gives, on pixels the predictions above leave void: a "thing" of class 3 on gt a's column 3
# in image 1, a "stuff" of class 5 on gt b's row 0 in image 2.
EXTRA_SEGMENTS = {
    1: [(77, 3, True, rectangle((0, 4), (3, 4)))],
    2: [(88, 5, False, rectangle((0, 1), (4, 8)))],
}


def predictions_with_extra_classes() -> dict:
    for image_id, segments in EXTRA_SEGMENTS.items():
        covered = np.logical_or.reduce([mask for *_, mask in PREDICTIONS[image_id]])
        assert not any((mask & covered).any() for *_, mask in segments)
    return {image_id: PREDICTIONS[image_id] + EXTRA_SEGMENTS[image_id] for image_id in PREDICTIONS}


@pytest.mark.parametrize("form", ["segments_info", "label_divisor"])
def test_segments_of_classes_the_dataset_lacks_are_left_out_with_a_warning(
    dataset_name, tmp_path, caplog, form
):
    """model.num_classes may exceed the dataset's categories (check_num_classes allows it):
    segments of the extra classes become void, which leaves PQ / SQ / RQ as they are without
    them, and one warning reports them (this was a KeyError in detectron2's conversion of
    category ids)."""
    predictions = predictions_with_extra_classes()
    if form == "segments_info":
        outputs = model_outputs(predictions)
    else:
        outputs = divisor_outputs(predictions, MetadataCatalog.get(dataset_name).label_divisor)
    with caplog.at_level(logging.WARNING, logger="detr_ext.evaluation.panoptic"):
        results = evaluate(dataset_name, outputs, output_dir=str(tmp_path))
    assert results["panoptic_seg"] == pytest.approx(EXPECTED, abs=1e-9)
    assert len(caplog.records) == 1
    message = caplog.records[0].getMessage()
    assert f"left out 2 predicted segments on {dataset_name!r} whose class (3, 5)" in message
    assert "not one of the dataset's 3 categories" in message
    assert "model.num_classes is larger" in message
    written = json.loads((tmp_path / "predictions.json").read_text())
    for annotation in written["annotations"]:
        assert set(annotation) == {"image_id", "file_name", "segments_info"}
        assert {s["category_id"] for s in annotation["segments_info"]} <= {4, 6, 9}
