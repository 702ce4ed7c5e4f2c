"""detr_ext.engine.checks.check_num_classes, and that do_train / do_test run it before any
training or evaluation: DETR and DINO shapes configs (3 categories) with model.num_classes=2."""

import argparse
import json
from pathlib import Path

import pytest
from detectron2.config import LazyConfig, instantiate
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances
from torch import nn

from detr_ext.data.datasets import register_shapes
from detr_ext.engine import do_test, do_train
from detr_ext.engine.checks import (
    CategoryMismatchError,
    NumClassesError,
    check_category_consistency,
    check_num_classes,
    config_dataset_names,
    dataset_num_classes,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIGS = {
    "detr": REPO_ROOT / "projects" / "detr" / "configs" / "detr_shapes.py",
    "dino": REPO_ROOT / "projects" / "dino" / "configs" / "dino_shapes.py",
}


@pytest.fixture
def load_shapes_config(tmp_path):
    """``load(project, *overrides)``: the project's shapes config with its datasets shrunk to
    4 train / 2 val images under ``tmp_path``; the default registration is restored after."""

    def load(project: str, *overrides: str):
        cfg = LazyConfig.load(str(CONFIGS[project]))
        cfg = LazyConfig.apply_overrides(cfg, list(overrides))
        # Loading the config registered the 1000-image default; replace it.
        register_shapes(root=tmp_path / "shapes", num_train=4, num_val=2, seed=0, replace=True)
        cfg.dataloader.train.total_batch_size = 2
        cfg.dataloader.train.num_workers = 0
        cfg.dataloader.test.num_workers = 0
        cfg.train.output_dir = str(tmp_path / "output")
        cfg.train.max_iter = 2
        cfg.train.device = "cpu"
        return cfg

    yield load
    register_shapes(root=None, num_train=1000, num_val=200, seed=0, replace=True)


@pytest.mark.parametrize("project", ["detr", "dino"])
def test_fewer_classes_than_categories_is_an_error(project, load_shapes_config):
    cfg = load_shapes_config(project, "model.num_classes=2")
    model = instantiate(cfg.model)
    message = r"model\.num_classes=2 is smaller than the 3 categories of dataset '{}'"
    with pytest.raises(NumClassesError, match=message.format("shapes_train")):
        check_num_classes(cfg, model)
    with pytest.raises(NumClassesError, match=message.format("shapes_val")):
        check_num_classes(cfg, model, splits=("test",))
    # Without a model the config's value is checked.
    with pytest.raises(NumClassesError, match=message.format("shapes_train")):
        check_num_classes(cfg)


@pytest.mark.parametrize("num_classes", [3, 91])
def test_equal_or_more_classes_pass(num_classes, load_shapes_config):
    cfg = load_shapes_config("detr", f"model.num_classes={num_classes}")
    check_num_classes(cfg, instantiate(cfg.model))


def test_dataset_names_as_list_and_models_without_num_classes(load_shapes_config):
    cfg = load_shapes_config("detr", "model.num_classes=2")
    cfg.dataloader.test.dataset.names = ["shapes_val", "shapes_train"]
    assert config_dataset_names(cfg) == ["shapes_train", "shapes_val"]
    assert config_dataset_names(cfg, ["test"]) == ["shapes_val", "shapes_train"]
    del cfg.model.num_classes
    check_num_classes(cfg, nn.Linear(2, 2))  # nothing to compare: no error


def test_registered_json_dataset_is_loaded_to_count_its_categories(tmp_path):
    """``register_coco_instances`` sets no ``thing_classes`` until the dataset is loaded."""
    categories = [{"id": i, "name": f"part{i}"} for i in (1, 2, 5, 9)]
    json_file = tmp_path / "parts.json"
    json_file.write_text(json.dumps({"images": [], "annotations": [], "categories": categories}))
    name = "test_checks_parts_val"
    register_coco_instances(name, {}, str(json_file), str(tmp_path))
    try:
        assert MetadataCatalog.get(name).get("thing_classes", None) is None
        cfg = LazyConfig.load(str(CONFIGS["detr"]))
        cfg.dataloader.test.dataset.names = name
        with pytest.raises(NumClassesError, match=f"4 categories of dataset '{name}'"):
            check_num_classes(cfg, instantiate(cfg.model), splits=("test",))
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def test_panoptic_datasets_count_things_and_stuff():
    """detectron2's unified panoptic metadata (register_coco_panoptic) numbers things and stuff
    together: 3 things + 1 stuff = 4 classes; the "separated" one keeps the things' count."""
    unified, separated = "checks_test_panoptic", "checks_test_panoptic_separated"
    try:
        MetadataCatalog.get(unified).set(
            thing_classes=["a", "b", "c"],
            thing_dataset_id_to_contiguous_id={3: 0, 7: 1, 11: 2},
            stuff_dataset_id_to_contiguous_id={3: 0, 7: 1, 11: 2, 20: 3},
        )
        MetadataCatalog.get(separated).set(
            thing_classes=["a", "b", "c"],
            thing_dataset_id_to_contiguous_id={3: 0, 7: 1, 11: 2},
            stuff_dataset_id_to_contiguous_id={3: 0, 7: 0, 11: 0, 20: 1},
        )
        assert dataset_num_classes(unified) == 4
        assert dataset_num_classes(separated) == 3
    finally:
        MetadataCatalog.remove(unified)
        MetadataCatalog.remove(separated)


@pytest.mark.parametrize("project", ["detr", "dino"])
def test_do_train_stops_before_the_first_iteration(project, load_shapes_config, tmp_path):
    # Unchecked, DETR trains category 2 as "no object" and DINO fails with an IndexError.
    cfg = load_shapes_config(project, "model.num_classes=2")
    with pytest.raises(NumClassesError, match=r"model\.num_classes=2 .* 'shapes_train'"):
        do_train(argparse.Namespace(resume=False), cfg)
    assert not list((tmp_path / "output").glob("*.pth"))


def test_do_test_checks_the_test_datasets(load_shapes_config):
    cfg = load_shapes_config("dino", "model.num_classes=2")
    model = instantiate(cfg.model).eval()
    with pytest.raises(NumClassesError, match=r"model\.num_classes=2 .* 'shapes_val'"):
        do_test(cfg, model, eval_only=True)


def _register_parts(tmp_path, name: str, category_ids, names=None) -> None:
    """A one-image COCO json with the given categories (one box of the first)."""
    from PIL import Image

    from detr_ext.data.datasets import register_coco_format_dataset

    names = names or [f"part{i}" for i in category_ids]
    images = tmp_path / "images"
    images.mkdir(exist_ok=True)
    Image.new("RGB", (32, 24)).save(images / "a.png")
    data = {
        "images": [{"id": 1, "file_name": "a.png", "height": 24, "width": 32}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": category_ids[0], "bbox": [2, 2, 10, 8]}
        ],
        "categories": [{"id": i, "name": n} for i, n in zip(category_ids, names, strict=True)],
    }
    json_file = tmp_path / f"{name}.json"
    json_file.write_text(json.dumps(data))
    register_coco_format_dataset(name, str(json_file), str(images))
    DatasetCatalog.get(name)  # loading sets the category mapping


@pytest.fixture
def parts_datasets(tmp_path, monkeypatch):
    monkeypatch.setenv("DETR_EXT_CACHE", str(tmp_path / "cache"))
    registered = []

    def register(name, category_ids, names=None):
        _register_parts(tmp_path, name, category_ids, names)
        registered.append(name)
        return name

    yield register
    for name in registered:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def _parts_config(train: str, test: str):
    cfg = LazyConfig.load(str(CONFIGS["dino"]))
    cfg.dataloader.train.dataset.names = train
    cfg.dataloader.test.dataset.names = test
    cfg.model.num_classes = 4
    return cfg


def test_test_set_numbering_categories_differently_is_an_error(parts_datasets):
    # The validation json leaves out category 3, which has no objects there: its class 1
    # would be scored as category 7, class 2 as 9.
    train = parts_datasets("checks_parts_train", [0, 3, 7, 9])
    val = parts_datasets("checks_parts_val", [0, 7, 9])
    cfg = _parts_config(train, val)
    with pytest.raises(
        CategoryMismatchError,
        match=r"'checks_parts_train' and 'checks_parts_val' number their categories "
        r"differently \(category ids only in the first: \[3\]; id 7 \('part7'\) is class 2 vs 1",
    ):
        check_category_consistency(cfg, instantiate(cfg.model))


def test_same_numbering_passes_and_other_names_warn(parts_datasets, caplog):
    train = parts_datasets("checks_parts_train", [0, 3, 7, 9])
    val = parts_datasets("checks_parts_val", [0, 3, 7, 9], ["a", "b", "c", "dd"])
    train_names = ["part0", "part3", "part7", "part9"]
    assert MetadataCatalog.get(train).thing_classes == train_names
    cfg = _parts_config(train, val)
    with caplog.at_level("WARNING", logger="detr_ext.engine.checks"):
        check_category_consistency(cfg, instantiate(cfg.model))
    assert "give categories other names (id 0: 'part0' vs 'a'" in caplog.text


def test_text_prompted_models_are_not_checked(parts_datasets):
    train = parts_datasets("checks_parts_train", [0, 3, 7, 9])
    val = parts_datasets("checks_parts_val", [5, 6])
    cfg = _parts_config(train, val)
    del cfg.model.num_classes
    check_category_consistency(cfg, nn.Linear(2, 2))  # no num_classes: open vocabulary


def test_do_train_checks_the_numbering_before_training(parts_datasets, tmp_path):
    train = parts_datasets("checks_parts_train", [0, 3, 7, 9])
    val = parts_datasets("checks_parts_val", [0, 7, 9])
    cfg = _parts_config(train, val)
    cfg.dataloader.train.total_batch_size = 1
    cfg.dataloader.train.num_workers = 0
    cfg.train.output_dir = str(tmp_path / "output")
    cfg.train.max_iter = 1
    cfg.train.device = "cpu"
    args = argparse.Namespace(resume=False, eval_only=False, num_gpus=1)
    with pytest.raises(CategoryMismatchError):
        do_train(args, cfg)
    assert not list((tmp_path / "output").glob("*.pth"))
