"""The data LazyConfig pieces load, build their mappers, and (for shapes) yield a batch."""

from pathlib import Path

import pytest
import torch
from detectron2.config import LazyConfig, instantiate
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import COCOEvaluator

from detr_ext.data import DetrDatasetMapper
from detr_ext.data.datasets import SHAPES_DATASET_NAMES, register_shapes

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools.*")

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs" / "common" / "data"


@pytest.fixture
def clean_shapes_registration():
    yield
    for name in SHAPES_DATASET_NAMES:
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)


def test_coco_detr_config_builds_mappers():
    cfg = LazyConfig.load(str(CONFIG_DIR / "coco_detr.py"))
    train_mapper = instantiate(cfg.dataloader.train.mapper)
    assert isinstance(train_mapper, DetrDatasetMapper)
    assert train_mapper.is_train and train_mapper.augmentation_with_crop is not None
    assert len(train_mapper.augmentation_with_crop.augs) == 4
    test_mapper = instantiate(cfg.dataloader.test.mapper)
    assert not test_mapper.is_train and test_mapper.img_format == "RGB"
    assert cfg.dataloader.evaluator.dataset_name == "coco_2017_val"
    assert cfg.dataloader.train.total_batch_size == 16


@pytest.mark.usefixtures("clean_shapes_registration")
def test_shapes_config_registers_cheaply(tmp_path, monkeypatch):
    monkeypatch.setenv("DETR_EXT_DATASETS", str(tmp_path / "datasets"))
    cfg = LazyConfig.load(str(CONFIG_DIR / "shapes.py"))
    assert set(SHAPES_DATASET_NAMES) <= set(DatasetCatalog.list())
    assert not (tmp_path / "datasets").exists(), "loading the config must not generate data"
    metadata = MetadataCatalog.get("shapes_train")
    assert metadata.image_root == str(tmp_path / "datasets" / "shapes" / "train")
    assert metadata.shapes_params["num_images"] == 1000
    assert isinstance(instantiate(cfg.dataloader.train.mapper), DetrDatasetMapper)
    assert cfg.dataloader.evaluator.dataset_name == "shapes_val"


@pytest.mark.usefixtures("clean_shapes_registration")
def test_shapes_config_yields_a_batch_from_a_tiny_dataset(tmp_path, monkeypatch):
    monkeypatch.setenv("DETR_EXT_DATASETS", str(tmp_path / "unused"))
    cfg = LazyConfig.load(str(CONFIG_DIR / "shapes.py"))
    register_shapes(tmp_path / "shapes", num_train=8, num_val=2, replace=True)
    cfg.dataloader.train.num_workers = 0
    cfg.dataloader.train.total_batch_size = 2
    batch = next(iter(instantiate(cfg.dataloader.train)))
    assert len(batch) == 2
    for sample in batch:
        image, instances = sample["image"], sample["instances"]
        assert image.dtype == torch.uint8 and image.dim() == 3 and image.shape[0] == 3
        assert max(image.shape[1:]) <= 512
        assert instances.image_size == tuple(image.shape[1:])
        assert set(instances.gt_classes.tolist()) <= {0, 1, 2}
        assert 256 <= sample["height"] <= 384 and 256 <= sample["width"] <= 384

    cfg.dataloader.test.num_workers = 0
    test_loader = instantiate(cfg.dataloader.test)
    sample = next(iter(test_loader))[0]
    assert "instances" not in sample and min(sample["image"].shape[1:]) == 320
    # The test loader generated the val split, so the evaluator finds its json.
    assert isinstance(instantiate(cfg.dataloader.evaluator), COCOEvaluator)
    assert not (tmp_path / "unused").exists()


# ------------------------------------------------------------------ segmentation data configs
@pytest.mark.usefixtures("clean_shapes_registration")
def test_shapes_segm_config_keeps_masks_and_scores_them(tmp_path, monkeypatch):
    monkeypatch.setenv("DETR_EXT_DATASETS", str(tmp_path / "datasets"))
    cfg = LazyConfig.load(str(CONFIG_DIR / "shapes_segm.py"))
    train_mapper = instantiate(cfg.dataloader.train.mapper)
    assert train_mapper.mask_on and train_mapper.mask_format == "auto"
    assert not instantiate(cfg.dataloader.test.mapper).mask_on
    assert list(cfg.dataloader.evaluator.tasks) == ["bbox", "segm"]
    assert cfg.dataloader.evaluator.dataset_name == "shapes_val"
    assert not (tmp_path / "datasets").exists()


@pytest.fixture
def clean_panoptic_registration():
    from detr_ext.data.datasets import SHAPES_PANOPTIC_DATASET_NAMES

    yield
    for name in (*SHAPES_PANOPTIC_DATASET_NAMES, *SHAPES_DATASET_NAMES):
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)


@pytest.mark.usefixtures("clean_panoptic_registration")
def test_shapes_panoptic_config_yields_a_batch_and_builds_its_evaluators(tmp_path, monkeypatch):
    from detr_ext.data import DetrPanopticDatasetMapper
    from detr_ext.data.datasets import register_shapes_panoptic
    from detr_ext.evaluation import COCOPanopticEvaluator

    monkeypatch.setenv("DETR_EXT_DATASETS", str(tmp_path / "unused"))
    cfg = LazyConfig.load(str(CONFIG_DIR / "shapes_panoptic.py"))
    assert not (tmp_path / "unused").exists(), "loading the config must not generate data"
    assert cfg.dataloader.train.dataset.names == "shapes_panoptic_train"
    assert MetadataCatalog.get("shapes_panoptic_train").shapes_params["num_images"] == 1000
    register_shapes_panoptic(tmp_path / "shapes", num_train=4, num_val=2, replace=True)
    cfg.dataloader.train.num_workers = 0
    cfg.dataloader.train.total_batch_size = 2
    assert isinstance(instantiate(cfg.dataloader.train.mapper), DetrPanopticDatasetMapper)
    batch = next(iter(instantiate(cfg.dataloader.train)))
    for sample in batch:
        instances = sample["instances"]
        assert instances.image_size == tuple(sample["image"].shape[1:])
        assert set(instances.gt_classes.tolist()) <= {0, 1, 2, 3}
        assert instances.gt_masks.tensor.shape[1:] == sample["image"].shape[1:]

    cfg.dataloader.test.num_workers = 0
    sample = next(iter(instantiate(cfg.dataloader.test)))[0]
    assert "instances" not in sample and min(sample["image"].shape[1:]) == 320
    # The test loader generated the val split: both evaluators find their files.
    coco, panoptic = instantiate(cfg.dataloader.evaluator)
    assert isinstance(coco, COCOEvaluator) and list(coco._tasks) == ["bbox", "segm"]
    assert isinstance(panoptic, COCOPanopticEvaluator)
    assert not (tmp_path / "unused").exists()


def test_coco_panoptic_detr_config_builds_mappers():
    from detr_ext.data import DetrPanopticDatasetMapper

    cfg = LazyConfig.load(str(CONFIG_DIR / "coco_panoptic_detr.py"))
    coco = LazyConfig.load(str(CONFIG_DIR / "coco_detr.py"))
    train_mapper = instantiate(cfg.dataloader.train.mapper)
    assert isinstance(train_mapper, DetrPanopticDatasetMapper) and train_mapper.mask_on
    assert len(train_mapper.augmentation_with_crop.augs) == 4
    assert cfg.dataloader.train.mapper.augmentation == coco.dataloader.train.mapper.augmentation
    assert not instantiate(cfg.dataloader.test.mapper).is_train
    assert cfg.dataloader.train.dataset.names == "coco_2017_train_panoptic"
    assert cfg.dataloader.test.dataset.names == "coco_2017_val_panoptic"
    names = [e.dataset_name for e in cfg.dataloader.evaluator]
    assert names == ["coco_2017_val_panoptic", "coco_2017_val"]
