"""Colour names of the shapes dataset, the grounding records built from them, and the
``common/data/shapes_grounding.py`` config."""

import colorsys
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from detectron2.config import LazyConfig, instantiate
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json
from detectron2.structures import Boxes, BoxMode, Instances
from PIL import Image
from scipy import ndimage

from detr_ext.data.datasets import (
    CATEGORY_RECORD_ID_OFFSET,
    SHAPES_CATEGORIES,
    SHAPES_COLORS,
    SHAPES_DATASET_NAMES,
    SHAPES_GROUNDING_DATASET_NAMES,
    generate_shapes_dataset,
    register_shapes,
    register_shapes_grounding,
)
from detr_ext.data.datasets.shapes import hue_color_name
from detr_ext.data.datasets.shapes_grounding import build_shapes_grounding_records
from detr_ext.evaluation import COCOEvaluator, GroundingEvaluator
from detr_ext.modeling.language import parse_prompt

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools.*")

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "common" / "data" / "shapes_grounding.py"
SHAPE_NAMES = [c["name"] for c in SHAPES_CATEGORIES]
ALL_NAMES = SHAPES_DATASET_NAMES + SHAPES_GROUNDING_DATASET_NAMES
NUM_TRAIN, NUM_VAL = 6, 4


def _unregister():
    for name in ALL_NAMES:
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)


@pytest.fixture
def clean_registration():
    _unregister()
    yield
    _unregister()


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory):
    """The files ``register_shapes(root, NUM_TRAIN, NUM_VAL)`` loads, generated once here so the
    registered loaders of each test find them complete."""
    root = tmp_path_factory.mktemp("shapes")
    generate_shapes_dataset(root, "train", NUM_TRAIN, seed=0)
    generate_shapes_dataset(root, "val", NUM_VAL, seed=0)
    return root


def _plain_val_records(root):
    """The val split as ``register_shapes_grounding`` reads it (dataset ids 3/7/11, colours)."""
    return load_coco_json(
        str(root / "annotations" / "instances_val.json"),
        str(root / "val"),
        extra_annotation_keys=["color"],
    )


def _load(root, **kwargs):
    register_shapes(root, NUM_TRAIN, NUM_VAL, replace=True)
    register_shapes_grounding(root, NUM_TRAIN, NUM_VAL, replace=True, **kwargs)
    return {name: DatasetCatalog.get(name) for name in ALL_NAMES}


# ------------------------------------------------------------------------ colour names
# sha256 of the decoded pixels of the generated images and of their json without "color" and
# "segmentation", computed with the generator before colour names existed (Pillow 13.0, numpy
# 2.4; the json hashes with generator version 2, whose segmentations were RLEs): colour names
# and exact polygons must not change a single draw. A Pillow upgrade that changes JPEG coding
# or polygon rasterization changes these too; then recompute them from a checkout of the older
# generator.
_REFERENCE_HASHES = {
    ("train", 4, 0, 256, 384): (
        "bbfde69874ad03a3c1924dedad713fc84e00819d523f1ed8902874e083fc4d91",
        "d9479f5782c3199b86b59a3f3709afcbf3441defa9ec06a4a123eb00faaf403b",
    ),
    ("val", 3, 5, 64, 96): (
        "c4030618976cb124c44f32bb36636aa8cd96efaef2ca4e9e8238d8e16ca8eb62",
        "2b4166a928499a1fa95920c801aaf346a61da0c2d15bfe14788fdcec7f21c597",
    ),
}


@pytest.mark.parametrize("params", list(_REFERENCE_HASHES))
def test_images_and_boxes_are_unchanged(tmp_path, params):
    split, num_images, seed, min_size, max_size = params
    json_file = generate_shapes_dataset(tmp_path, split, num_images, seed, min_size, max_size)
    pixels = hashlib.sha256()
    for index in range(num_images):
        image = Image.open(tmp_path / split / f"{index:06d}.jpg").convert("RGB")
        pixels.update(np.asarray(image).tobytes())
    content = json.loads(Path(json_file).read_text())
    annotations = [
        {k: v for k, v in a.items() if k not in ("color", "segmentation")}
        for a in content["annotations"]
    ]
    boxes = hashlib.sha256(json.dumps([content["images"], annotations], sort_keys=True).encode())
    assert (pixels.hexdigest(), boxes.hexdigest()) == _REFERENCE_HASHES[params]


@pytest.mark.parametrize(
    "degrees, name",
    [(0, "red"), (29.9, "red"), (330.1, "red"), (359.9, "red"), (30.1, "yellow"), (60, "yellow")]
    + [(120, "green"), (180, "cyan"), (240, "blue"), (269.9, "blue"), (270.1, "purple")],
)
def test_hue_color_name_bins(degrees, name):
    assert hue_color_name(degrees / 360) == name


def test_hue_color_name_rejects_out_of_range():
    with pytest.raises(ValueError, match="hue in \\[0, 1\\]"):
        hue_color_name(1.5)


def _hue_degrees(rgb):
    hue, _, _ = colorsys.rgb_to_hsv(*(np.asarray(rgb, dtype=np.float64) / 255.0))
    return 360.0 * hue


def test_color_names_match_the_drawn_hue(tmp_path):
    """Each annotation's colour is the hue bin of its object's pixels: the median colour of its
    visible mask, eroded against JPEG's blurred edges. Hues near a bin edge may read back in the
    neighbouring bin, so the check allows 10 degrees beyond the bin."""
    json_file = generate_shapes_dataset(tmp_path, "train", 12, seed=1, min_size=96, max_size=128)
    content = json.loads(Path(json_file).read_text())
    files = {image["id"]: image["file_name"] for image in content["images"]}
    sizes = {image["id"]: (image["height"], image["width"]) for image in content["images"]}
    checked, exact, wrong = 0, 0, []
    for annotation in content["annotations"]:
        assert annotation["color"] in SHAPES_COLORS
        polygons = mask_util.frPyObjects(annotation["segmentation"], *sizes[annotation["image_id"]])
        mask = mask_util.decode(mask_util.merge(polygons)).astype(bool)
        mask = ndimage.binary_erosion(mask, iterations=2)
        if mask.sum() < 20:
            continue
        pixels = np.asarray(Image.open(tmp_path / "train" / files[annotation["image_id"]]))
        hue = _hue_degrees(np.median(pixels[mask], axis=0))
        centre = 60.0 * SHAPES_COLORS.index(annotation["color"])
        distance = abs((hue - centre + 180.0) % 360.0 - 180.0)
        checked += 1
        exact += hue_color_name(hue / 360.0) == annotation["color"]
        if distance > 40.0:
            wrong.append(f"annotation {annotation['id']}: {annotation['color']}, hue {hue:.0f}")
    assert checked >= 20 and wrong == []
    assert exact >= 0.9 * checked
    assert len({a["color"] for a in content["annotations"]}) >= 5


# --------------------------------------------------------------------- grounding records
@pytest.mark.usefixtures("clean_registration")
def test_registration_is_lazy(tmp_path):
    names = register_shapes_grounding(tmp_path / "shapes", num_train=3, num_val=2)
    assert names == ("shapes_grounding_train", "shapes_grounding_val")
    assert not (tmp_path / "shapes").exists()
    metadata = MetadataCatalog.get("shapes_grounding_val")
    assert metadata.evaluator_type == "grounding"
    assert metadata.get("thing_classes") is None
    assert metadata.shapes_grounding_params["include_category_prompts"] is False
    assert MetadataCatalog.get("shapes_grounding_train").shapes_grounding_params[
        "include_category_prompts"
    ]


@pytest.mark.usefixtures("clean_registration")
def test_colour_records_label_each_box_with_its_phrase(shapes_root):
    datasets = _load(shapes_root)
    for plain_name, grounding_name in (
        ("shapes_train", "shapes_grounding_train"),
        ("shapes_val", "shapes_grounding_val"),
    ):
        plain = {r["image_id"]: r for r in datasets[plain_name]}
        colour_records = [r for r in datasets[grounding_name] if r["image_id"] in plain]
        assert len(colour_records) == len(plain)
        for record in colour_records:
            original = plain[record["image_id"]]
            assert record["file_name"] == original["file_name"]
            phrases = parse_prompt(record["prompt"])
            assert record["prompt"] == " . ".join(phrases) + " ."
            assert len(set(phrases)) == len(phrases)
            present = set()
            assert len(record["annotations"]) == len(original["annotations"])
            for annotation, plain_annotation in zip(
                record["annotations"], original["annotations"], strict=True
            ):
                shape = SHAPE_NAMES[plain_annotation["category_id"]]
                assert phrases[annotation["category_id"]] == f"{annotation['color']} {shape}"
                for key in ("bbox", "bbox_mode", "iscrowd", "segmentation"):
                    assert annotation[key] == plain_annotation[key]
                present.add(phrases[annotation["category_id"]])
            negatives = set(phrases) - present
            # Negatives name a colour and a shape, none of which the image holds.
            assert len(negatives) == 2
            for phrase in negatives:
                colour, shape = phrase.split(" ")
                assert colour in SHAPES_COLORS and shape in SHAPE_NAMES


@pytest.mark.usefixtures("clean_registration")
def test_phrase_order_is_shuffled(shapes_root):
    records = _load(shapes_root)["shapes_grounding_val"]
    # Not always the order the phrases were collected in (present sorted, then negatives).
    orders = []
    for record in records:
        phrases = parse_prompt(record["prompt"])
        present = sorted({phrases[a["category_id"]] for a in record["annotations"]})
        orders.append(phrases[: len(present)] == present)
    assert not all(orders)
    # A fixed reordering (reversed, rotated) passes the check above; the order must be drawn
    # per record. The same image under 40 image ids (each id seeds its own draw): the phrase
    # at each prompt position, as the rank of a present phrase or -1 for a negative, is a
    # pattern; a fixed reordering gives one pattern, a rotation at most one per position.
    record = max(_plain_val_records(shapes_root), key=lambda r: len(r["annotations"]))
    copies = [{**record, "image_id": image_id} for image_id in range(1, 41)]
    patterns, first_positions = set(), set()
    for built in build_shapes_grounding_records(copies, "val"):
        phrases = parse_prompt(built["prompt"])
        present = sorted({phrases[a["category_id"]] for a in built["annotations"]})
        patterns.add(tuple(present.index(p) if p in present else -1 for p in phrases))
        first_positions.add(phrases.index(present[0]))
    assert len(phrases) >= 5 and first_positions == set(range(len(phrases)))
    assert len(patterns) > 2 * len(phrases)


@pytest.mark.usefixtures("clean_registration")
def test_category_records_on_train_only(shapes_root):
    datasets = _load(shapes_root)
    plain_train = {r["image_id"]: r for r in datasets["shapes_train"]}
    train = datasets["shapes_grounding_train"]
    image_ids = [r["image_id"] for r in train]
    assert len(train) == 2 * NUM_TRAIN and len(set(image_ids)) == len(image_ids)
    category_records = [r for r in train if r["image_id"] >= CATEGORY_RECORD_ID_OFFSET]
    assert len(category_records) == NUM_TRAIN
    for record in category_records:
        original = plain_train[record["image_id"] - CATEGORY_RECORD_ID_OFFSET]
        assert record["prompt"] == "circle . square . triangle ."
        assert record["file_name"] == original["file_name"]
        assert [a["category_id"] for a in record["annotations"]] == [
            a["category_id"] for a in original["annotations"]
        ]
        assert [a["bbox"] for a in record["annotations"]] == [
            a["bbox"] for a in original["annotations"]
        ]
    val = datasets["shapes_grounding_val"]
    assert sorted(r["image_id"] for r in val) == sorted(
        r["image_id"] for r in datasets["shapes_val"]
    )

    register_shapes_grounding(
        shapes_root, NUM_TRAIN, NUM_VAL, include_category_prompts=False, replace=True
    )
    train = DatasetCatalog.get("shapes_grounding_train")
    assert len(train) == NUM_TRAIN and all(r["image_id"] < NUM_TRAIN + 1 for r in train)
    assert all(r["prompt"] != "circle . square . triangle ." for r in train)


@pytest.mark.usefixtures("clean_registration")
def test_records_are_deterministic_and_follow_the_seed(shapes_root):
    first = _load(shapes_root)["shapes_grounding_val"]
    assert DatasetCatalog.get("shapes_grounding_val") == first
    _unregister()
    assert _load(shapes_root)["shapes_grounding_val"] == first
    prompts = [r["prompt"] for r in first]
    register_shapes_grounding(shapes_root, NUM_TRAIN, NUM_VAL, num_negative_phrases=0, replace=True)
    without_negatives = DatasetCatalog.get("shapes_grounding_val")
    for record in without_negatives:
        phrases = parse_prompt(record["prompt"])
        assert set(range(len(phrases))) == {a["category_id"] for a in record["annotations"]}
    assert [r["prompt"] for r in without_negatives] != prompts
    # The seed draws the negatives and the order: the same images under seed 1 get other
    # prompts, and seed 1 again the same ones (generating images for another seed would
    # change the prompts through the images alone, so the records are built from these).
    plain = _plain_val_records(shapes_root)
    assert build_shapes_grounding_records(plain, "val", seed=0) == first
    reseeded = [r["prompt"] for r in build_shapes_grounding_records(plain, "val", seed=1)]
    assert reseeded != prompts
    assert sum(a != b for a, b in zip(reseeded, prompts, strict=True)) >= NUM_VAL - 1
    assert [r["prompt"] for r in build_shapes_grounding_records(plain, "val", seed=1)] == reseeded


@pytest.mark.usefixtures("clean_registration")
def test_shares_the_files_of_register_shapes(shapes_root):
    json_file = shapes_root / "annotations" / "instances_val.json"
    stamp = os.stat(json_file).st_mtime_ns
    _load(shapes_root)
    assert os.stat(json_file).st_mtime_ns == stamp, "the split must not be generated again"


@pytest.mark.usefixtures("clean_registration")
def test_registration_errors(tmp_path):
    with pytest.raises(ValueError, match="num_negative_phrases must be an int >= 0, got -1"):
        register_shapes_grounding(tmp_path, num_negative_phrases=-1)
    with pytest.raises(ValueError, match="num_val must be a positive int, got 0"):
        register_shapes_grounding(tmp_path, num_val=0)
    register_shapes_grounding(tmp_path, num_train=3, num_val=2)
    register_shapes_grounding(tmp_path, num_train=3, num_val=2)  # same parameters: a no-op
    with pytest.raises(ValueError, match="already registered"):
        register_shapes_grounding(tmp_path, num_train=3, num_val=2, num_negative_phrases=1)


@pytest.mark.usefixtures("clean_registration")
def test_stale_json_without_colours_is_reported(tmp_path):
    json_file = Path(generate_shapes_dataset(tmp_path, "val", 2, seed=0))
    content = json.loads(json_file.read_text())
    for annotation in content["annotations"]:
        del annotation["color"]
    json_file.write_text(json.dumps(content))  # the manifest still matches: no regeneration
    register_shapes_grounding(tmp_path, num_train=2, num_val=2)
    with pytest.raises(ValueError, match="has color None, expected one of"):
        DatasetCatalog.get("shapes_grounding_val")


@pytest.mark.usefixtures("clean_registration")
def test_ground_truth_as_predictions_gives_full_recall(shapes_root):
    """The grounding val split through GroundingEvaluator: its own boxes, scored, are found."""
    records = _load(shapes_root)["shapes_grounding_val"]
    evaluator = GroundingEvaluator("shapes_grounding_val", distributed=False)
    evaluator.reset()
    for record in records:
        boxes = [
            BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS)
            for a in record["annotations"]
        ]
        instances = Instances((record["height"], record["width"]))
        instances.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32))
        instances.scores = torch.ones(len(boxes))
        instances.pred_classes = torch.tensor([a["category_id"] for a in record["annotations"]])
        evaluator.process([{"image_id": record["image_id"]}], [{"instances": instances}])
    results = evaluator.evaluate()["grounding"]
    num_phrases = sum(len({a["category_id"] for a in r["annotations"]}) for r in records)
    assert results == {"R@1": 100.0, "R@5": 100.0, "num_phrases": num_phrases}


# ------------------------------------------------------------------------------ config
@pytest.mark.usefixtures("clean_registration")
def test_config_registers_cheaply_with_the_shapes_sizes(tmp_path, monkeypatch):
    monkeypatch.setenv("DETR_EXT_DATASETS", str(tmp_path / "datasets"))
    cfg = LazyConfig.load(str(CONFIG))
    assert not (tmp_path / "datasets").exists(), "loading the config must not generate data"
    assert cfg.dataloader.train.dataset.names == "shapes_grounding_train"
    assert cfg.dataloader.test.dataset.names == "shapes_val"
    assert cfg.dataloader.evaluator._target_ is COCOEvaluator
    assert cfg.dataloader.evaluator.dataset_name == "shapes_val"
    assert cfg.dataloader.extra_tests.grounding.evaluator._target_ is GroundingEvaluator
    shapes = MetadataCatalog.get("shapes_train").shapes_params
    grounding = MetadataCatalog.get("shapes_grounding_train").shapes_grounding_params
    assert {k: grounding[k] for k in shapes} == shapes
    assert grounding["num_images"] == 1000 and grounding["include_category_prompts"]
    assert MetadataCatalog.get("shapes_grounding_val").shapes_grounding_params["num_images"] == 200


@pytest.mark.usefixtures("clean_registration")
def test_config_loaders_yield_prompts(shapes_root, tmp_path, monkeypatch):
    monkeypatch.setenv("DETR_EXT_DATASETS", str(tmp_path / "unused"))
    cfg = LazyConfig.load(str(CONFIG))
    _load(shapes_root)
    cfg.dataloader.train.num_workers = 0
    cfg.dataloader.train.total_batch_size = 4
    batch = next(iter(instantiate(cfg.dataloader.train)))
    assert all(isinstance(sample["prompt"], str) for sample in batch)
    for sample in batch:
        assert sample["instances"].gt_classes.max() < len(parse_prompt(sample["prompt"]))

    # The grounding test follows the main test's mapper, changed after the config was loaded.
    cfg.dataloader.test.num_workers = 0
    cfg.dataloader.test.mapper.augmentation[0].short_edge_length = 200
    grounding = cfg.dataloader.extra_tests.grounding
    loader = instantiate(grounding.loader)
    sample = next(iter(loader))[0]
    assert min(sample["image"].shape[1:]) == 200 and "prompt" in sample
    evaluator = instantiate(grounding.evaluator)
    assert isinstance(evaluator, GroundingEvaluator)
    assert evaluator._dataset_name == "shapes_grounding_val"
    assert not (tmp_path / "unused").exists()
