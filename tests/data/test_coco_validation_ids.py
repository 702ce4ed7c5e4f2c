"""register_coco_format_dataset on ids and records that pass detectron2's loader and training,
then break or bias evaluation at its end: image / category ids that are not non-negative ints
(refused), annotations without ``iscrowd`` (filled) and exact duplicate annotations (dropped).
Each evaluation check runs both backends on the registered json, with every ground-truth box
predicted exactly: a correct registration scores AP 100."""

import json

import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

from detr_ext.data.datasets import register_coco_format_dataset
from detr_ext.evaluation.coco_backend import evaluate_on_coco, load_coco_gt

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools.*")

NAME = "detr_ext_test_coco_ids"
BACKENDS = ("pycocotools", "hotcoco")


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """Cached copies go under tmp_path; the test dataset is unregistered afterwards."""
    monkeypatch.setenv("DETR_EXT_CACHE", str(tmp_path / "cache"))
    yield
    if NAME in DatasetCatalog.list():
        DatasetCatalog.remove(NAME)
        MetadataCatalog.remove(NAME)


def _image(image_id, file_name=None):
    file_name = file_name or f"img_{image_id}.png"
    return {"id": image_id, "file_name": file_name, "width": 64, "height": 48}


def _annotation(annotation_id, image_id, bbox, category_id=1, **fields):
    annotation = {"id": annotation_id, "image_id": image_id, "category_id": category_id}
    annotation.update(bbox=bbox, area=bbox[2] * bbox[3], iscrowd=0)
    annotation.update(fields)
    return annotation


def _without(annotation, *keys):
    return {key: value for key, value in annotation.items() if key not in keys}


def _write(tmp_path, images, annotations, categories=None):
    """Write the json and every image file; returns (json, image_root)."""
    image_root = tmp_path / "images"
    image_root.mkdir(exist_ok=True)
    for image in images:
        Image.new("RGB", (image["width"], image["height"])).save(image_root / image["file_name"])
    categories = categories or [{"id": 1, "name": "bolt"}, {"id": 2, "name": "nut"}]
    content = {"images": images, "annotations": annotations, "categories": categories}
    json_file = tmp_path / "instances.json"
    json_file.write_text(json.dumps(content))
    return str(json_file), str(image_root)


def _registered_json(name):
    with open(MetadataCatalog.get(name).json_file) as f:
        return json.load(f)


def _perfect_ap(name, backend):
    """Box AP of the registered json when every object of detectron2's dataset dicts (what
    training reads) is predicted exactly, once (records of the same box and category are one
    object), category indices mapped back to the json's."""
    records = DatasetCatalog.get(name)  # loading fills the category mapping of the metadata
    metadata = MetadataCatalog.get(name)
    to_dataset_id = {index: i for i, index in metadata.thing_dataset_id_to_contiguous_id.items()}
    objects = {
        (record["image_id"], to_dataset_id[a["category_id"]], tuple(a["bbox"]))
        for record in records
        for a in record["annotations"]
        if not a.get("iscrowd", 0)
    }  # boxes are XYWH_ABS, as load_coco_json returns them
    results = [
        {"image_id": image_id, "category_id": category_id, "bbox": list(box), "score": 1.0}
        for image_id, category_id, box in sorted(objects)
    ]
    coco_gt = load_coco_gt(metadata.json_file, backend)
    coco_eval = evaluate_on_coco(coco_gt, results, "bbox", backend, print_summary=False)
    return 100.0 * coco_eval.stats[0]


# --------------------------------------------------------------- image and category ids
@pytest.mark.parametrize("bad_id", ["img_2", -2, True, 2.0])
def test_image_ids_that_are_not_non_negative_ints_are_refused(tmp_path, bad_id):
    images = [_image(1), _image(bad_id, file_name="img_2.png")]
    annotations = [_annotation(1, 1, [1, 1, 9, 9]), _annotation(2, bad_id, [2, 2, 9, 9])]
    json_file, image_root = _write(tmp_path, images, annotations)
    with pytest.raises(ValueError, match="images without a non-negative integer 'id'") as error:
        register_coco_format_dataset(NAME, json_file, image_root)
    message = str(error.value)
    assert json_file in message
    assert f"(1): images[1]: id={bad_id!r} (file_name='img_2.png')" in message
    assert "Renumber the images" in message and "'image_id'" in message
    assert NAME not in DatasetCatalog.list()


@pytest.mark.parametrize("bad_id", [-1, "2", False])
def test_category_ids_that_are_not_non_negative_ints_are_refused(tmp_path, bad_id):
    categories = [{"id": 1, "name": "bolt"}, {"id": bad_id, "name": "nut"}]
    annotations = [_annotation(1, 1, [1, 1, 9, 9]), _annotation(2, 1, [2, 2, 9, 9], bad_id)]
    json_file, image_root = _write(tmp_path, [_image(1)], annotations, categories)
    with pytest.raises(ValueError, match="categories without a non-negative integer 'id'") as e:
        register_coco_format_dataset(NAME, json_file, image_root)
    message = str(e.value)
    assert json_file in message
    assert f"(1): categories[1]: id={bad_id!r} (name='nut')" in message
    assert "Renumber the categories" in message and "'category_id'" in message
    # The annotation of the refused category is not reported a second time as unknown.
    assert "category_id is not in 'categories'" not in message
    assert NAME not in DatasetCatalog.list()


@pytest.mark.parametrize("backend", BACKENDS)
def test_image_id_0_and_category_id_0_evaluate_to_ap_100(tmp_path, backend):
    categories = [{"id": 0, "name": "bolt"}, {"id": 5, "name": "nut"}]
    annotations = [
        _annotation(1, 0, [2, 3, 20, 16], category_id=0),
        _annotation(2, 0, [30, 5, 30, 40], category_id=5),
        _annotation(3, 1, [4, 4, 50, 40], category_id=0),
    ]
    json_file, image_root = _write(tmp_path, [_image(0), _image(1)], annotations, categories)
    register_coco_format_dataset(NAME, json_file, image_root)
    assert MetadataCatalog.get(NAME).json_file == json_file  # nothing to clean
    assert sorted(record["image_id"] for record in DatasetCatalog.get(NAME)) == [0, 1]
    assert _perfect_ap(NAME, backend) == pytest.approx(100.0)


# -------------------------------------------------------------------------------- iscrowd
@pytest.mark.parametrize("backend", BACKENDS)
def test_missing_iscrowd_is_filled_and_evaluates_to_ap_100(tmp_path, warnings_log, backend):
    # Converter output: no iscrowd, no segmentation (pycocotools raised KeyError: 'iscrowd').
    annotations = [
        _without(_annotation(1, 1, [2, 3, 20, 16]), "iscrowd"),
        _annotation(2, 1, [30, 5, 30, 40], category_id=2, iscrowd=None),
        _without(_annotation(3, 2, [4, 4, 50, 40]), "iscrowd"),
        _annotation(4, 2, [0, 0, 10, 10], iscrowd=1),  # a crowd region stays one
    ]
    json_file, image_root = _write(tmp_path, [_image(1), _image(2)], annotations)
    register_coco_format_dataset(NAME, json_file, image_root)
    assert _perfect_ap(NAME, backend) == pytest.approx(100.0)

    [filled] = [m for m in warnings_log if "'iscrowd' with 0" in m]
    assert json_file in filled
    assert "(3): id=1 (image_id=1); id=2 (image_id=1); id=3 (image_id=2)" in filled
    cleaned = _registered_json(NAME)["annotations"]
    assert [a["iscrowd"] for a in cleaned] == [0, 0, 0, 1]
    assert [a["bbox"] for a in cleaned] == [a["bbox"] for a in annotations]


@pytest.mark.parametrize("iscrowd", ["0", 2, [0]])
def test_iscrowd_that_is_not_0_or_1_is_refused(tmp_path, iscrowd):
    # "0" is a crowd region to detectron2 (never trained on) and pycocotools (never scored);
    # hotcoco refuses the file at the evaluation after training.
    annotations = [
        _annotation(1, 1, [1, 1, 9, 9]),
        _annotation(2, 1, [2, 2, 9, 9], iscrowd=iscrowd),
    ]
    json_file, image_root = _write(tmp_path, [_image(1)], annotations)
    with pytest.raises(ValueError, match="'iscrowd' is not 0 or 1") as error:
        register_coco_format_dataset(NAME, json_file, image_root)
    assert f"(1): id=2 (image_id=1): iscrowd={iscrowd!r}" in str(error.value)
    assert json_file in str(error.value)


# ----------------------------------------------------------------- duplicate annotations
def test_exact_duplicate_annotations_are_dropped_others_kept(tmp_path, warnings_log):
    polygon = [[10, 10, 30, 10, 30, 30, 10, 30]]
    first = _annotation(1, 1, [10, 10, 20, 20], segmentation=polygon)
    annotations = [
        first,
        {**first, "id": 2},  # an exact copy under another id: dropped
        _annotation(3, 1, [12, 12, 20, 20]),  # overlaps the first: kept
        {**first, "id": 4, "category_id": 2},  # another category: kept
        {**first, "id": 5, "segmentation": [[10, 10, 30, 10, 10, 30]]},  # another mask: kept
        {**first, "id": 6, "iscrowd": 1},  # a crowd region: kept
        {**first, "image_id": 2},  # the same id on another image: kept, renumbered
        dict(first),  # an exact copy under the same id: dropped
        _annotation(7, 2, [1, 2, 30, 20]),
        _annotation(1, 2, [1, 2, 30, 20]),  # an id repeated with the same box: dropped
    ]
    json_file, image_root = _write(tmp_path, [_image(1), _image(2)], annotations)
    register_coco_format_dataset(NAME, json_file, image_root)

    [dropped] = [m for m in warnings_log if "exact duplicate annotations" in m]
    assert json_file in dropped
    assert (
        "(3): image_id=1: id=2 repeats id=1; image_id=1: id=1 repeats id=1; "
        "image_id=2: id=1 repeats id=7"
    ) in dropped
    kept = [0, 2, 3, 4, 5, 6, 8]
    cleaned = _registered_json(NAME)["annotations"]
    assert [a["id"] for a in cleaned] == list(range(1, len(kept) + 1))  # renumbered
    assert [_without(a, "id") for a in cleaned] == [_without(annotations[i], "id") for i in kept]
    # What training reads is the cleaned copy too.
    assert sum(len(record["annotations"]) for record in DatasetCatalog.get(NAME)) == len(kept)


@pytest.mark.parametrize("backend", BACKENDS)
def test_duplicate_annotation_does_not_lower_the_ap_of_a_perfect_detector(tmp_path, backend):
    annotations = [
        _annotation(1, 1, [2, 3, 20, 16]),
        _annotation(2, 1, [2, 3, 20, 16]),  # the same object exported twice
        _annotation(3, 1, [30, 5, 30, 40], category_id=2),
        _annotation(4, 2, [4, 4, 50, 40]),
    ]
    json_file, image_root = _write(tmp_path, [_image(1), _image(2)], annotations)
    register_coco_format_dataset(NAME, json_file, image_root)
    assert _perfect_ap(NAME, backend) == pytest.approx(100.0)
