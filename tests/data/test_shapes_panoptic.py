"""The shapes images as a COCO panoptic dataset: PNG segments equal the instance polygons painted
in drawing order, segments_info describes them, generation is idempotent, registration is lazy
and yields detectron2 panoptic dicts that the panoptic mapper reads."""

import json
import os

import numpy as np
import pycocotools.mask as mask_util
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data import transforms as T
from PIL import Image

from detr_ext.data import DetrPanopticDatasetMapper
from detr_ext.data.datasets import (
    SHAPES_PANOPTIC_DATASET_NAMES,
    generate_shapes_dataset,
    generate_shapes_panoptic,
    register_shapes_panoptic,
)
from detr_ext.data.panoptic_mapper import rgb2id

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools.*")


def _unregister():
    for name in SHAPES_PANOPTIC_DATASET_NAMES:
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)


@pytest.fixture
def clean_registration():
    _unregister()
    yield
    _unregister()


@pytest.fixture(scope="module")
def panoptic_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    generate_shapes_dataset(root, "train", num_images=6, seed=0)
    generate_shapes_panoptic(root, "train")
    return root


def _load(path):
    with open(path) as f:
        return json.load(f)


def _polygon_mask(annotation, height, width):
    rles = mask_util.frPyObjects(annotation["segmentation"], height, width)
    return mask_util.decode(mask_util.merge(rles)).astype(bool)


def test_png_segments_are_the_polygons_painted_in_drawing_order(panoptic_root):
    instances = _load(panoptic_root / "annotations" / "instances_train.json")
    panoptic = _load(panoptic_root / "annotations" / "panoptic_train.json")
    assert panoptic["images"] == instances["images"]
    categories = {c["id"]: c for c in panoptic["categories"]}
    assert {i: (c["name"], c["isthing"]) for i, c in categories.items()} == {
        3: ("circle", 1),
        7: ("square", 1),
        11: ("triangle", 1),
        20: ("background", 0),
    }
    assert all(len(c["color"]) == 3 for c in categories.values())
    images = {image["id"]: image for image in instances["images"]}
    for entry in panoptic["annotations"]:
        image = images[entry["image_id"]]
        height, width = image["height"], image["width"]
        assert entry["file_name"] == image["file_name"].replace(".jpg", ".png")
        color = np.asarray(Image.open(panoptic_root / "panoptic_train" / entry["file_name"]))
        segment_ids = rgb2id(color)
        annotations = sorted(
            (a for a in instances["annotations"] if a["image_id"] == image["id"]),
            key=lambda a: a["id"],
        )
        polygons = [_polygon_mask(a, height, width) for a in annotations]
        info = {s["id"]: s for s in entry["segments_info"]}
        assert set(np.unique(segment_ids)) == set(info)
        for index, annotation in enumerate(annotations):
            # Segment k: its polygons minus those of every object drawn after it.
            expected = polygons[index] & ~np.any(polygons[index + 1 :], axis=0)
            assert np.array_equal(segment_ids == index + 1, expected)
            assert info[index + 1]["category_id"] == annotation["category_id"]
        background = ~np.any(polygons, axis=0)
        assert np.array_equal(segment_ids == len(annotations) + 1, background)
        assert info[len(annotations) + 1]["category_id"] == 20
        for segment_id, segment in info.items():
            mask = segment_ids == segment_id
            ys, xs = np.nonzero(mask)
            x0, y0 = int(xs.min()), int(ys.min())
            assert segment["area"] == mask.sum() and segment["iscrowd"] == 0
            assert segment["bbox"] == [x0, y0, xs.max() + 1 - x0, ys.max() + 1 - y0]


def test_generation_is_idempotent_and_follows_the_instances(tmp_path):
    with pytest.raises(FileNotFoundError, match="generate_shapes_dataset"):
        generate_shapes_panoptic(tmp_path, "train")
    with pytest.raises(ValueError, match="split"):
        generate_shapes_panoptic(tmp_path, "../train")
    generate_shapes_dataset(tmp_path, "train", num_images=3, seed=0)
    json_path = generate_shapes_panoptic(tmp_path, "train")
    png = tmp_path / "panoptic_train" / "000000.png"
    stamps = (os.stat(json_path).st_mtime_ns, os.stat(png).st_mtime_ns)
    assert generate_shapes_panoptic(tmp_path, "train") == json_path
    assert (os.stat(json_path).st_mtime_ns, os.stat(png).st_mtime_ns) == stamps

    # New instances (fewer images) regenerate the panoptic split.
    generate_shapes_dataset(tmp_path, "train", num_images=2, seed=0)
    generate_shapes_panoptic(tmp_path, "train")
    assert sorted(os.listdir(tmp_path / "panoptic_train")) == ["000000.png", "000001.png"]
    assert len(_load(json_path)["annotations"]) == 2
    # A missing PNG makes the split incomplete.
    os.remove(tmp_path / "panoptic_train" / "000001.png")
    generate_shapes_panoptic(tmp_path, "train")
    assert (tmp_path / "panoptic_train" / "000001.png").is_file()


@pytest.mark.usefixtures("clean_registration")
def test_registration_is_lazy_and_gives_panoptic_dicts(tmp_path):
    root = tmp_path / "shapes"
    names = register_shapes_panoptic(root, num_train=3, num_val=2)
    assert names == ("shapes_panoptic_train", "shapes_panoptic_val")
    assert not root.exists(), "registration must not generate anything"

    dicts = DatasetCatalog.get("shapes_panoptic_train")
    assert len(dicts) == 3
    metadata = MetadataCatalog.get("shapes_panoptic_train")
    assert metadata.thing_classes == ["circle", "square", "triangle"]
    assert metadata.stuff_classes == ["circle", "square", "triangle", "background"]
    assert metadata.thing_dataset_id_to_contiguous_id == {3: 0, 7: 1, 11: 2}
    assert metadata.stuff_dataset_id_to_contiguous_id == {3: 0, 7: 1, 11: 2, 20: 3}
    assert metadata.evaluator_type == "coco_panoptic_seg"
    assert (metadata.ignore_label, metadata.label_divisor) == (255, 1000)
    assert metadata.json_file == str(root / "annotations" / "instances_train.json")
    assert metadata.panoptic_json == str(root / "annotations" / "panoptic_train.json")
    assert metadata.panoptic_root == str(root / "panoptic_train")
    assert os.path.isfile(metadata.json_file) and os.path.isfile(metadata.panoptic_json)
    for record in dicts:
        assert record["file_name"].endswith(".jpg") and os.path.isfile(record["file_name"])
        assert os.path.isfile(record["pan_seg_file_name"])
        assert 256 <= record["height"] <= 384 and 256 <= record["width"] <= 384
        categories = [s["category_id"] for s in record["segments_info"]]
        assert set(categories) <= {0, 1, 2, 3} and categories[-1] == 3
        assert [s["isthing"] for s in record["segments_info"]] == [c < 3 for c in categories]
    assert len(DatasetCatalog.get("shapes_panoptic_val")) == 2

    # The mapper turns every segment into a target: the things, then the background.
    mapped = DetrPanopticDatasetMapper([T.NoOpTransform()], None)(dicts[0])
    instances = mapped["instances"]
    assert instances.gt_classes.tolist() == [s["category_id"] for s in dicts[0]["segments_info"]]
    assert instances.gt_masks.tensor.sum() == sum(s["area"] for s in dicts[0]["segments_info"])
    assert instances.gt_masks.tensor.sum() == dicts[0]["height"] * dicts[0]["width"]


@pytest.mark.usefixtures("clean_registration")
def test_registering_again(tmp_path):
    register_shapes_panoptic(tmp_path, num_train=3, num_val=2)
    register_shapes_panoptic(tmp_path, num_train=3, num_val=2)  # same parameters: a no-op
    with pytest.raises(ValueError, match="already registered"):
        register_shapes_panoptic(tmp_path, num_train=4, num_val=2)
    register_shapes_panoptic(tmp_path, num_train=4, num_val=2, replace=True)
    assert MetadataCatalog.get("shapes_panoptic_train").shapes_params["num_images"] == 4
    with pytest.raises(ValueError, match="num_train"):
        register_shapes_panoptic(tmp_path, num_train=0, replace=True)
