"""do_test's ``cfg.dataloader.extra_tests``: every entry is evaluated after the main test and
its results are merged in; an entry without a loader or evaluator, or one that reports a
result name already reported, is an error naming the entry."""

import pytest
from detectron2.config import LazyCall as L
from detectron2.config import LazyConfig, instantiate
from detectron2.data import build_detection_test_loader, get_detection_dataset_dicts
from omegaconf import OmegaConf

from detr_ext.data.datasets import register_shapes, register_shapes_grounding
from detr_ext.engine import do_test
from detr_ext.evaluation import COCOEvaluator, GroundingEvaluator
from tests.projects.tiny_shapes import SHAPES_CONFIGS


@pytest.fixture
def cfg(tmp_path):
    cfg = LazyConfig.load(str(SHAPES_CONFIGS["dino"]))
    register_shapes(root=tmp_path / "shapes", num_train=2, num_val=2, seed=0, replace=True)
    register_shapes_grounding(root=tmp_path / "shapes", num_train=2, num_val=2, replace=True)
    cfg.dataloader.test.num_workers = 0
    cfg.train.output_dir = str(tmp_path / "output")
    cfg.model.num_queries = 10
    cfg.model.select_box_nums_for_evaluation = 10
    yield cfg
    register_shapes(root=None, num_train=1000, num_val=200, seed=0, replace=True)
    register_shapes_grounding(root=None, num_train=1000, num_val=200, seed=0, replace=True)


def grounding_test():
    return {
        "loader": L(build_detection_test_loader)(
            dataset=L(get_detection_dataset_dicts)(
                names="shapes_grounding_val", filter_empty=False
            ),
            mapper="${....test.mapper}",
            num_workers=0,
        ),
        "evaluator": L(GroundingEvaluator)(dataset_name="shapes_grounding_val"),
    }


def test_extra_test_results_are_merged_and_written_to_their_folder(cfg, tmp_path):
    cfg.dataloader.extra_tests = {"grounding": grounding_test()}
    results = do_test(cfg, instantiate(cfg.model).eval(), eval_only=True)
    assert "AP" in results["bbox"]
    assert {"R@1", "R@5", "num_phrases"} <= set(results["grounding"])
    assert results["grounding"]["num_phrases"] > 0


def test_bad_extra_tests_name_the_entry(cfg):
    model = instantiate(cfg.model).eval()
    broken = OmegaConf.create({"loader": grounding_test()["loader"]})
    cfg.dataloader.extra_tests = {"broken": broken}
    with pytest.raises(ValueError, match=r"extra_tests\.broken: .*missing \['evaluator'\]"):
        do_test(cfg, model, eval_only=True)
    # A second COCO evaluation would overwrite the main test's "bbox" results.
    again = {"loader": grounding_test()["loader"]}
    again["evaluator"] = L(COCOEvaluator)(dataset_name="shapes_val")
    again["loader"].dataset.names = "shapes_val"
    cfg.dataloader.extra_tests = {"again": again}
    with pytest.raises(ValueError, match=r"extra_tests\.again: .*reports \['bbox'\]"):
        do_test(cfg, model, eval_only=True)
