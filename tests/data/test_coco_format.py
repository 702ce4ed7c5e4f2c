"""register_coco_format_dataset on the defects of real exports: refused at registration with the
file and ids named, dropped / repaired with a warning, and evaluation correct for any ids."""

import json
import math
import os

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances
from detectron2.evaluation import COCOEvaluator
from detectron2.structures import Boxes, BoxMode, Instances
from PIL import Image

from detr_ext.data.datasets import register_coco_format_dataset
from detr_ext.data.datasets.coco_format import coco_format_cache_directory

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools.*")

NAME = "detr_ext_test_user_coco"
CATEGORIES = [{"id": 4, "name": "bolt"}, {"id": 9, "name": "nut"}]


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """Cached copies go under tmp_path; test datasets are unregistered afterwards."""
    monkeypatch.setenv("DETR_EXT_CACHE", str(tmp_path / "cache"))
    yield
    for name in (NAME, NAME + "_raw"):
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)


def _image(image_id, size=(64, 48)):
    return {"id": image_id, "file_name": f"img_{image_id}.png", "width": size[0], "height": size[1]}


def _annotation(annotation_id, image_id, bbox, category_id=4, **fields):
    annotation = {"id": annotation_id, "image_id": image_id, "category_id": category_id}
    annotation["bbox"] = bbox
    if isinstance(bbox, list) and len(bbox) == 4 and "area" not in fields:
        annotation["area"] = bbox[2] * bbox[3]
    annotation.update(iscrowd=0, **fields)
    return annotation


def _write(tmp_path, images, annotations, categories=CATEGORIES, write_images=True):
    """Write the json and (unless told otherwise) every image file; returns (json, image_root)."""
    image_root = tmp_path / "images"
    image_root.mkdir(exist_ok=True)
    if write_images:
        for image in images:
            size = (image["width"], image["height"])
            Image.new("RGB", size, (90, 120, 150)).save(image_root / image["file_name"])
    json_file = tmp_path / "instances.json"
    content = {"images": images, "annotations": annotations, "categories": categories}
    json_file.write_text(json.dumps(content))
    return str(json_file), str(image_root)


def _loaded_boxes(name):
    """(image_id, bbox, category index) of every annotation detectron2's loader yields."""
    return sorted(
        (record["image_id"], list(a["bbox"]), a["category_id"])
        for record in DatasetCatalog.get(name)
        for a in record["annotations"]
    )


# ----------------------------------------------------------------------------- refused
def test_duplicate_image_ids_are_refused(tmp_path):
    images = [_image(1), _image(2), {**_image(2), "file_name": "other.png"}]
    json_file, image_root = _write(tmp_path, images, [_annotation(1, 2, [1, 1, 5, 5])])
    with pytest.raises(ValueError, match="duplicate image ids") as error:
        register_coco_format_dataset(NAME, json_file, image_root)
    assert json_file in str(error.value)
    assert "id=2 (img_2.png and other.png)" in str(error.value)
    assert NAME not in DatasetCatalog.list()


def test_missing_image_files_are_refused_with_count_and_names(tmp_path):
    images = [_image(i) for i in range(1, 9)]
    json_file, image_root = _write(tmp_path, images, [_annotation(1, 1, [1, 1, 5, 5])])
    for image in images[1:]:
        os.remove(os.path.join(image_root, image["file_name"]))
    with pytest.raises(ValueError, match="image files missing") as error:
        register_coco_format_dataset(NAME, json_file, image_root)
    message = str(error.value)
    assert f"missing under {image_root} (7): img_2.png; img_3.png" in message
    assert "(2 more)" in message and "img_8.png" not in message
    assert NAME not in DatasetCatalog.list()


def test_unknown_category_is_refused(tmp_path):
    annotations = [_annotation(1, 1, [1, 1, 5, 5]), _annotation(2, 1, [2, 2, 5, 5], category_id=5)]
    json_file, image_root = _write(tmp_path, [_image(1)], annotations)
    with pytest.raises(ValueError, match="category_id is not in 'categories'") as error:
        register_coco_format_dataset(NAME, json_file, image_root)
    assert "id=2 (image_id=1): category_id=5" in str(error.value)
    assert json_file in str(error.value)


@pytest.mark.parametrize(
    "image, message",
    [
        ({"id": 1, "file_name": "img_1.png", "width": 64}, "height=None"),
        ({"id": [1], "file_name": "img_1.png", "width": 64, "height": 48}, "id=[1]"),
        ({"id": 1, "width": 64, "height": 48}, "file_name=None"),
    ],
)
def test_malformed_images_are_refused(tmp_path, image, message):
    # An annotation with a mask and no area: filling it must not trip over the bad image.
    polygon = [[1, 1, 9, 1, 9, 9]]
    annotation = {"id": 1, "image_id": 1, "category_id": 4, "bbox": [1, 1, 8, 8]}
    annotation["segmentation"] = polygon
    json_file, image_root = _write(tmp_path, [image], [annotation], write_images=False)
    Image.new("RGB", (64, 48)).save(os.path.join(image_root, "img_1.png"))
    with pytest.raises(ValueError, match="images without") as error:
        register_coco_format_dataset(NAME, json_file, image_root)
    assert message in str(error.value)


# ------------------------------------------------------------------- dropped / repaired
def test_invalid_boxes_are_dropped_with_a_warning_never_reinterpreted(tmp_path, warnings_log):
    annotations = [
        _annotation(1, 1, [10, 10, 20, 15]),  # the only valid one
        _annotation(2, 1, [40, 10, -20, 15]),  # negative width: would become [20, 10, 40, 25]
        _annotation(3, 1, [10, 10, 20, 0]),
        _annotation(4, 2, None),
        {"id": 5, "image_id": 2, "category_id": 4, "area": 4.0, "iscrowd": 0},  # no bbox
        _annotation(6, 2, [1, 2, math.nan, 3], area=3.0),
        _annotation(7, 2, [1, 2, 3]),
    ]
    json_file, image_root = _write(tmp_path, [_image(1), _image(2)], annotations)
    register_coco_format_dataset(NAME, json_file, image_root)

    dropped = [m for m in warnings_log if "dropped annotations whose bbox" in m]
    assert len(dropped) == 1 and json_file in dropped[0]
    assert "(6): id=2 (image_id=1): bbox=[40, 10, -20, 15]; id=3 (image_id=1)" in dropped[0]
    assert "id=4 (image_id=2): bbox=None" in dropped[0] and "(1 more)" in dropped[0]
    # What detectron2 loads for training is the cleaned data: only the valid box.
    assert _loaded_boxes(NAME) == [(1, [10, 10, 20, 15], 0)]
    metadata = MetadataCatalog.get(NAME)
    assert metadata.source_json_file == json_file
    assert os.path.dirname(metadata.json_file) == coco_format_cache_directory()
    with open(metadata.json_file) as f:
        cleaned = json.load(f)
    assert [a["id"] for a in cleaned["annotations"]] == [1]
    assert cleaned["images"] == [_image(1), _image(2)] and cleaned["categories"] == CATEGORIES


def test_duplicate_and_zero_annotation_ids_are_renumbered(tmp_path, warnings_log):
    annotations = [
        _annotation(0, 1, [1, 1, 10, 10]),
        _annotation(7, 1, [5, 5, 10, 10]),
        _annotation(7, 2, [2, 3, 4, 5], category_id=9),
    ]
    json_file, image_root = _write(tmp_path, [_image(1), _image(2)], annotations)
    register_coco_format_dataset(NAME, json_file, image_root)
    renumbered = [m for m in warnings_log if "renumbered annotation ids" in m]
    assert len(renumbered) == 1
    assert "not positive ints (1): id=0 (image_id=1)" in renumbered[0]
    assert "duplicate ids (1): id=7 (image_id=2)" in renumbered[0]
    # detectron2's loader refuses duplicate ids in the source file; the copy loads.
    assert _loaded_boxes(NAME) == [
        (1, [1, 1, 10, 10], 0),
        (1, [5, 5, 10, 10], 0),
        (2, [2, 3, 4, 5], 1),
    ]
    with open(MetadataCatalog.get(NAME).json_file) as f:
        cleaned = json.load(f)
    assert [a["id"] for a in cleaned["annotations"]] == [1, 2, 3]
    assert [a["bbox"] for a in cleaned["annotations"]] == [a["bbox"] for a in annotations]


def _evaluate_ground_truth_as_predictions(name):
    """AP of COCOEvaluator (real pycocotools) when every ground-truth box is predicted exactly."""
    evaluator = COCOEvaluator(name, tasks=("bbox",), distributed=False)
    evaluator.reset()
    for record in DatasetCatalog.get(name):
        instances = Instances((record["height"], record["width"]))
        annotations = record["annotations"]
        boxes = [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in annotations]
        instances.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
        instances.scores = torch.ones(len(boxes))
        instances.pred_classes = torch.tensor([a["category_id"] for a in annotations])
        evaluator.process([{"image_id": record["image_id"]}], [{"instances": instances}])
    return evaluator.evaluate()["bbox"]["AP"]


def test_annotation_id_zero_evaluates_to_ap_100(tmp_path):
    # Ids from 0, as labeling tools number them; small and medium boxes, two categories.
    annotations = [
        _annotation(0, 1, [2.0, 3.0, 20.0, 16.0]),
        _annotation(1, 1, [30.0, 5.0, 30.0, 40.0], category_id=9),
        _annotation(2, 2, [4.0, 4.0, 50.0, 40.0]),
        _annotation(3, 2, [0.0, 0.0, 5.0, 5.0], category_id=9),
    ]
    json_file, image_root = _write(tmp_path, [_image(1), _image(2)], annotations)
    register_coco_format_dataset(NAME, json_file, image_root)
    assert _evaluate_ground_truth_as_predictions(NAME) == pytest.approx(100.0)

    # The bug this guards against: the same evaluation against the file as exported.
    register_coco_instances(NAME + "_raw", {}, json_file, image_root)
    assert _evaluate_ground_truth_as_predictions(NAME + "_raw") < 99.0


def test_boxes_past_the_image_are_clipped_and_boxes_outside_it_dropped(tmp_path, warnings_log):
    """Boxes drawn over the image border: training clips them (the mapper), so evaluation must
    score the same clipped box, else a perfect detector misses them (IoU 0.16 here)."""
    annotations = [
        _annotation(1, 1, [50.0, 30.0, 40.0, 40.0]),  # 64 x 48 image: past the right and bottom
        _annotation(2, 1, [-8.0, 2.0, 20.0, 10.0], category_id=9),  # past the left border
        _annotation(3, 1, [70.0, 10.0, 5.0, 5.0]),  # entirely right of the image
        _annotation(4, 2, [0.0, 0.0, 64.5, 48.0]),  # 0.5 px past: export rounding, kept
        _annotation(5, 2, [10.0, 10.0, 20.0, 20.0], area="?"),
        _annotation(6, 2, [40.0, -30.0, 20.0, 40.0], area="?"),  # filled from the clipped box
    ]
    json_file, image_root = _write(tmp_path, [_image(1), _image(2)], annotations)
    register_coco_format_dataset(NAME, json_file, image_root)

    [clipped] = [m for m in warnings_log if "clipped to their image" in m]
    assert "(3): id=1 (image_id=1): bbox=[50.0, 30.0, 40.0, 40.0], image 64x48" in clipped
    [dropped] = [m for m in warnings_log if "entirely outside its image" in m]
    assert "(1): id=3 (image_id=1): bbox=[70.0, 10.0, 5.0, 5.0], image 64x48" in dropped
    with open(MetadataCatalog.get(NAME).json_file) as f:
        cleaned = {a["id"]: a for a in json.load(f)["annotations"]}
    assert sorted(cleaned) == [1, 2, 4, 5, 6]
    assert cleaned[1]["bbox"] == [50.0, 30.0, 14.0, 18.0] and cleaned[1]["area"] == 1600.0
    assert cleaned[2]["bbox"] == [0.0, 2.0, 12.0, 10.0]
    assert cleaned[4]["bbox"] == [0.0, 0.0, 64.5, 48.0]
    assert cleaned[6]["bbox"] == [40.0, 0.0, 20.0, 10.0] and cleaned[6]["area"] == 200.0
    assert _evaluate_ground_truth_as_predictions(NAME) == pytest.approx(100.0)

    # Against the boxes as exported, the same (clipped) detections miss boxes 1, 2 and 6
    # (numeric areas there, which COCOeval needs).
    raw_dir = tmp_path / "raw"
    raw_dir.mkdir()
    raw_annotations = [{**a, "area": a["bbox"][2] * a["bbox"][3]} for a in annotations]
    raw_json, raw_root = _write(raw_dir, [_image(1), _image(2)], raw_annotations)
    register_coco_instances(NAME + "_raw", {}, raw_json, raw_root)
    raw = COCOEvaluator(NAME + "_raw", tasks=("bbox",), distributed=False)
    raw.reset()
    for record in DatasetCatalog.get(NAME):
        instances = Instances((record["height"], record["width"]))
        boxes = [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS)
                 for a in record["annotations"]]  # fmt: skip
        instances.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
        instances.scores = torch.ones(len(boxes))
        instances.pred_classes = torch.tensor([a["category_id"] for a in record["annotations"]])
        raw.process([{"image_id": record["image_id"]}], [{"instances": instances}])
    assert raw.evaluate()["bbox"]["AP"] < 75.0


def test_area_missing_is_filled_and_inconsistent_area_warned(tmp_path, warnings_log):
    square = [[10, 10, 30, 10, 30, 30, 10, 30]]  # a 20x20 polygon, area 400
    triangle = [[10, 10, 30, 10, 10, 30]]  # area 200 in a 20x20 box: consistent
    annotations = [
        _annotation(1, 1, [10, 10, 20, 20], area=1000.0),  # larger than its box
        _annotation(2, 1, [10, 10, 20, 20], area=0),
        _annotation(3, 1, [10, 10, 20, 20], area=40.0),  # no mask: should be ~400
        _annotation(4, 1, [10, 10, 20, 20], area=200.0, segmentation=triangle),
        _annotation(5, 1, [10, 10, 20, 20], area=395.0),  # within tolerance
        {**_annotation(6, 1, [10, 10, 20, 20], segmentation=square), "area": None},
        {key: v for key, v in _annotation(7, 1, [1, 2, 3, 4]).items() if key != "area"},
    ]
    json_file, image_root = _write(tmp_path, [_image(1)], annotations)
    register_coco_format_dataset(NAME, json_file, image_root)

    odd = [m for m in warnings_log if "does not fit their box" in m]
    assert len(odd) == 1
    assert "(3): id=1 (image_id=1): area=1000, box 20x20 (no mask); id=2" in odd[0]
    assert "id=3 (image_id=1): area=40" in odd[0] and "id=4" not in odd[0]
    filled = [m for m in warnings_log if "filled a missing" in m]
    assert len(filled) == 1 and "(2): id=6 (image_id=1): area=None; id=7" in filled[0]
    with open(MetadataCatalog.get(NAME).json_file) as f:
        areas = [a["area"] for a in json.load(f)["annotations"]]
    # Filled from the rasterized polygon (COCO's own rule), and from the box without a mask.
    assert areas[:5] == [1000.0, 0, 40.0, 200.0, 395.0]
    assert 400 <= areas[5] <= 441 and areas[6] == 12


def test_annotations_of_unknown_images_are_warned(tmp_path, warnings_log):
    annotations = [_annotation(1, 1, [1, 1, 5, 5]), _annotation(2, 42, [1, 1, 5, 5])]
    json_file, image_root = _write(tmp_path, [_image(1)], annotations)
    register_coco_format_dataset(NAME, json_file, image_root)
    assert any("not an image of the file (1): id=2 (image_id=42)" in m for m in warnings_log)
    # Ignored by the loader and COCOeval alike, so the source file is registered as it is.
    assert MetadataCatalog.get(NAME).json_file == json_file
    assert _loaded_boxes(NAME) == [(1, [1, 1, 5, 5], 0)]


# ------------------------------------------------------------------------------ caching
def test_cleaned_copy_is_deterministic_reused_and_refreshed(tmp_path):
    annotations = [_annotation(0, 1, [1, 1, 10, 10]), _annotation(1, 1, [2, 2, 8, 8])]
    json_file, image_root = _write(tmp_path, [_image(1)], annotations)
    register_coco_format_dataset(NAME, json_file, image_root)
    copy_path = MetadataCatalog.get(NAME).json_file
    stamp = os.stat(copy_path).st_mtime_ns
    register_coco_format_dataset(NAME, json_file, image_root)  # the same again: a no-op
    with pytest.raises(ValueError, match="already registered for"):
        register_coco_format_dataset(NAME, json_file, str(tmp_path))

    DatasetCatalog.remove(NAME)
    MetadataCatalog.remove(NAME)
    register_coco_format_dataset(NAME, json_file, image_root)
    assert MetadataCatalog.get(NAME).json_file == copy_path
    assert os.stat(copy_path).st_mtime_ns == stamp, "an unchanged source reuses its copy"
    assert [f for f in os.listdir(os.path.dirname(copy_path)) if f.endswith(".tmp")] == []

    # The source changed on disk: registering again checks it again and uses a new copy.
    annotations.append(_annotation(2, 1, [3, 3, 5, 5]))
    _write(tmp_path, [_image(1)], annotations)
    register_coco_format_dataset(NAME, json_file, image_root)
    assert MetadataCatalog.get(NAME).json_file != copy_path
    assert len(_loaded_boxes(NAME)) == 3


def test_clean_json_is_registered_as_it_is(tmp_path, warnings_log):
    json_file, image_root = _write(tmp_path, [_image(1)], [_annotation(1, 1, [1, 1, 5, 5])])
    register_coco_format_dataset(NAME, json_file, image_root)
    assert MetadataCatalog.get(NAME).json_file == json_file
    assert warnings_log == []
    assert not os.path.exists(coco_format_cache_directory())
    np.testing.assert_equal(_loaded_boxes(NAME), [(1, [1, 1, 5, 5], 0)])
