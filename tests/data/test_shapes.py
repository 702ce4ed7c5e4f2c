"""The bundled shapes dataset: determinism, COCO validity, idempotent generation, registration,
and the COCO-format registration helper."""

import json
import math
import os

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image
from pycocotools.coco import COCO
from scipy import ndimage

from detr_ext.data.datasets import (
    SHAPES_CATEGORIES,
    SHAPES_DATASET_NAMES,
    generate_shapes_dataset,
    register_coco_format_dataset,
    register_shapes,
)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools.*")


def _unregister(*names):
    for name in names:
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)


@pytest.fixture
def clean_shapes_registration():
    _unregister(*SHAPES_DATASET_NAMES)
    yield
    _unregister(*SHAPES_DATASET_NAMES)


@pytest.fixture(scope="module")
def shapes_json(tmp_path_factory):
    """A few dozen training images, shared by the validity checks."""
    root = tmp_path_factory.mktemp("shapes")
    return generate_shapes_dataset(root, "train", num_images=36, seed=0)


def _read_bytes(path):
    with open(path, "rb") as f:
        return f.read()


def test_same_seed_gives_identical_files(tmp_path):
    json_a = generate_shapes_dataset(tmp_path / "a", "train", num_images=5, seed=3)
    json_b = generate_shapes_dataset(tmp_path / "b", "train", num_images=5, seed=3)
    assert _read_bytes(json_a) == _read_bytes(json_b)
    for index in range(5):
        name = f"{index:06d}.jpg"
        assert _read_bytes(tmp_path / "a" / "train" / name) == _read_bytes(
            tmp_path / "b" / "train" / name
        )


def test_seed_and_split_change_the_data(tmp_path):
    base = json.loads(_read_bytes(generate_shapes_dataset(tmp_path / "a", "train", 4, seed=0)))
    other_seed = json.loads(_read_bytes(generate_shapes_dataset(tmp_path / "b", "train", 4, 1)))
    other_split = json.loads(_read_bytes(generate_shapes_dataset(tmp_path / "c", "val", 4, 0)))
    assert base["annotations"] != other_seed["annotations"]
    assert base["annotations"] != other_split["annotations"]


def test_coco_json_is_valid(shapes_json):
    coco = COCO(shapes_json)
    assert len(coco.getImgIds()) == 36
    for image in coco.loadImgs(coco.getImgIds()):
        assert 256 <= image["height"] <= 384 and 256 <= image["width"] <= 384
        path = os.path.join(os.path.dirname(os.path.dirname(shapes_json)), "train")
        assert os.path.isfile(os.path.join(path, image["file_name"]))
        annotations = coco.loadAnns(coco.getAnnIds(imgIds=image["id"]))
        assert 1 <= len(annotations) <= 6
        for annotation in annotations:
            x, y, w, h = annotation["bbox"]
            assert x >= 0 and y >= 0 and w > 0 and h > 0
            assert x + w <= image["width"] and y + h <= image["height"]
            assert 0 < annotation["area"] <= w * h
            assert annotation["iscrowd"] == 0
            # The box and area are those of the rendered visible pixels; the polygons
            # rasterize to nearly those pixels (exactly checked in test_shapes_polygons.py).
            mask = coco.annToMask(annotation)
            ys, xs = np.nonzero(mask)
            tight = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
            assert np.abs(tight - [x, y, x + w, y + h]).max() <= 1
            assert abs(int(mask.sum()) - annotation["area"]) <= 0.1 * annotation["area"] + 4


# Rotation- and scale-invariant second moment of a filled shape, sum |p - centroid|^2 / area^2:
# 1 / (2 pi) = 0.159 for a disk, 1/6 = 0.167 for a square, sqrt(3) / 9 = 0.192 for an
# equilateral triangle. Thresholds halfway between.
_SHAPE_MOMENT_THRESHOLDS = (("circle", 0.1629), ("square", 0.1796), ("triangle", math.inf))


def _drawn_shape(pixels, annotation, mask, margin=3):
    """Classify the shape drawn in ``pixels`` [H, W, 3] inside an annotation's box.

    Looks at the rendered image: the object's colour is the median of the pixels under the
    annotation's ``mask`` [H, W], the shape is the largest connected region of pixels of that
    colour around the box (after a 3x3 mean filter against the noise), and its moment names
    the shape."""
    color = np.median(pixels[mask.astype(bool)], axis=0)
    x, y, w, h = annotation["bbox"]
    x0, y0 = max(x - margin, 0), max(y - margin, 0)
    smooth = ndimage.uniform_filter(pixels, size=(3, 3, 1))
    window = smooth[y0 : y + h + margin, x0 : x + w + margin]
    similar = np.linalg.norm(window - color, axis=-1) < 30
    labels, count = ndimage.label(similar)
    assert count > 0, f"annotation {annotation['id']}: no pixels of the object's colour"
    sizes = ndimage.sum(similar, labels, range(1, count + 1))
    region = ndimage.binary_fill_holes(labels == 1 + int(np.argmax(sizes)))
    ys, xs = np.nonzero(region)
    moment = (((ys - ys.mean()) ** 2).sum() + ((xs - xs.mean()) ** 2).sum()) / region.sum() ** 2
    return next(name for name, limit in _SHAPE_MOMENT_THRESHOLDS if moment < limit)


def test_each_annotation_labels_the_shape_drawn(shapes_json):
    """The category of every annotation matches the shape in the image. Checked on objects whose
    box overlaps no other box (their shape is whole) and of at least 20 px (not pixelated)."""
    coco = COCO(shapes_json)
    image_root = os.path.join(os.path.dirname(os.path.dirname(shapes_json)), "train")
    names = {c["id"]: c["name"] for c in SHAPES_CATEGORIES}

    def apart(a, b):
        (ax, ay, aw, ah), (bx, by, bw, bh) = a["bbox"], b["bbox"]
        return ax + aw + 2 <= bx or bx + bw + 2 <= ax or ay + ah + 2 <= by or by + bh + 2 <= ay

    checked, wrong = {name: 0 for name in names.values()}, []
    for image in coco.loadImgs(coco.getImgIds()):
        annotations = coco.loadAnns(coco.getAnnIds(imgIds=image["id"]))
        path = os.path.join(image_root, image["file_name"])
        pixels = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32)
        for annotation in annotations:
            if min(annotation["bbox"][2:]) < 20 or not all(
                apart(annotation, other) for other in annotations if other is not annotation
            ):
                continue
            drawn = _drawn_shape(pixels, annotation, coco.annToMask(annotation))
            labelled = names[annotation["category_id"]]
            checked[labelled] += 1
            if drawn != labelled:
                wrong.append(f"annotation {annotation['id']}: labelled {labelled}, drawn {drawn}")
    assert min(checked.values()) >= 5, f"too few whole objects of some shape to check: {checked}"
    assert wrong == []


def test_categories_are_non_contiguous_and_all_used(shapes_json):
    coco = COCO(shapes_json)
    category_ids = sorted(coco.getCatIds())
    assert category_ids == [c["id"] for c in SHAPES_CATEGORIES]
    assert category_ids[0] != 0 and category_ids != list(range(1, len(category_ids) + 1))
    used = {a["category_id"] for a in coco.dataset["annotations"]}
    assert used == set(category_ids) and len(used) >= 3


def test_object_sizes_span_small_to_large(shapes_json):
    coco = COCO(shapes_json)
    areas = np.array([a["area"] for a in coco.dataset["annotations"]])
    sides = np.array([max(a["bbox"][2:]) for a in coco.dataset["annotations"]])
    assert (areas < 32**2).sum() >= 5, "expected COCO-small objects"
    assert (areas > 96**2).sum() >= 3, "expected COCO-large objects"
    assert sides.min() <= 16


def test_generation_is_idempotent_and_regenerates_on_change(tmp_path):
    json_path = generate_shapes_dataset(tmp_path, "train", num_images=4, seed=0)
    first_image = tmp_path / "train" / "000000.jpg"
    stamps = (os.stat(json_path).st_mtime_ns, os.stat(first_image).st_mtime_ns)
    assert generate_shapes_dataset(tmp_path, "train", num_images=4, seed=0) == json_path
    assert (os.stat(json_path).st_mtime_ns, os.stat(first_image).st_mtime_ns) == stamps

    generate_shapes_dataset(tmp_path, "train", num_images=2, seed=0)
    assert sorted(os.listdir(tmp_path / "train")) == ["000000.jpg", "000001.jpg"]
    assert len(json.loads(_read_bytes(json_path))["images"]) == 2

    # A missing image makes the split incomplete: it is generated again.
    os.remove(tmp_path / "train" / "000001.jpg")
    generate_shapes_dataset(tmp_path, "train", num_images=2, seed=0)
    assert (tmp_path / "train" / "000001.jpg").is_file()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"split": "../x"}, "split"),
        ({"num_images": 0}, "num_images"),
        ({"min_size": 400}, "min_size"),
    ],
)
def test_generation_rejects_bad_arguments(tmp_path, kwargs, message):
    arguments = {"split": "train", "num_images": 2, "seed": 0, **kwargs}
    with pytest.raises(ValueError, match=message):
        generate_shapes_dataset(tmp_path, **arguments)


@pytest.mark.usefixtures("clean_shapes_registration")
def test_registration_is_lazy_and_maps_ids_contiguously(tmp_path):
    root = tmp_path / "shapes"
    assert register_shapes(root, num_train=6, num_val=3) == ("shapes_train", "shapes_val")
    assert not root.exists(), "registration must not generate anything"

    dicts = DatasetCatalog.get("shapes_train")
    assert len(dicts) == 6 and (root / "annotations" / "instances_train.json").is_file()
    metadata = MetadataCatalog.get("shapes_train")
    assert metadata.thing_classes == ["circle", "square", "triangle"]
    assert metadata.thing_dataset_id_to_contiguous_id == {3: 0, 7: 1, 11: 2}
    assert metadata.evaluator_type == "coco"
    classes = {a["category_id"] for d in dicts for a in d["annotations"]}
    assert classes <= {0, 1, 2}
    assert all(os.path.isfile(d["file_name"]) for d in dicts)
    assert len(DatasetCatalog.get("shapes_val")) == 3


@pytest.mark.usefixtures("clean_shapes_registration")
def test_registering_again(tmp_path):
    register_shapes(tmp_path, num_train=6, num_val=3)
    register_shapes(tmp_path, num_train=6, num_val=3)  # same parameters: a no-op
    with pytest.raises(ValueError, match="already registered"):
        register_shapes(tmp_path, num_train=7, num_val=3)
    register_shapes(tmp_path, num_train=7, num_val=3, replace=True)
    assert MetadataCatalog.get("shapes_train").shapes_params["num_images"] == 7
    with pytest.raises(ValueError, match="num_val"):
        register_shapes(tmp_path, num_train=7, num_val=0, replace=True)


def test_register_coco_format_dataset(tmp_path, shapes_json):
    name = "detr_ext_test_coco_format"
    image_root = os.path.join(os.path.dirname(os.path.dirname(shapes_json)), "train")
    _unregister(name)
    try:
        register_coco_format_dataset(name, shapes_json, image_root)
        dicts = DatasetCatalog.get(name)
        assert len(dicts) == 36
        assert MetadataCatalog.get(name).thing_classes == ["circle", "square", "triangle"]
        register_coco_format_dataset(name, shapes_json, image_root)  # same again: no-op
        with pytest.raises(ValueError, match="already registered for"):
            register_coco_format_dataset(name, shapes_json, str(tmp_path))
    finally:
        _unregister(name)


def test_register_coco_format_dataset_errors(tmp_path, shapes_json):
    with pytest.raises(FileNotFoundError, match="json"):
        register_coco_format_dataset("x_missing", tmp_path / "missing.json", tmp_path)
    with pytest.raises(FileNotFoundError, match="image directory"):
        register_coco_format_dataset("x_missing", shapes_json, tmp_path / "no_images")
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({"images": [], "categories": []}))
    with pytest.raises(ValueError, match="missing \\['annotations'\\]"):
        register_coco_format_dataset("x_broken", broken, tmp_path)
    broken.write_text("{not json")
    with pytest.raises(ValueError, match="not valid json"):
        register_coco_format_dataset("x_broken", broken, tmp_path)
    assert "x_missing" not in DatasetCatalog.list() and "x_broken" not in DatasetCatalog.list()
