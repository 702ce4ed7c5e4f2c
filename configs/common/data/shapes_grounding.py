"""The bundled shapes dataset for text-prompted detection (``detr_ext.data.datasets.
shapes_grounding``): train on colour prompts ("red circle . blue square .") and category
prompts, test box AP with category names and phrase-grounding recall with colour prompts.

Builds on ``common/data/shapes.py`` (same mappers, same images under
``$DETR_EXT_DATASETS/shapes``) and registers, with the same sizes (1000 / 200 images, seed 0):

- ``dataloader.train``: ``shapes_grounding_train``, one colour record and one category record
  per image, each with its ``"prompt"``;
- ``dataloader.test`` + ``dataloader.evaluator``: ``shapes_val`` with ``COCOEvaluator``; its
  records have no prompt, so the model prompts with its category names ("circle . square .
  triangle .") and the box AP is comparable with the closed-set detectors';
- ``dataloader.extra_tests.grounding``: ``shapes_grounding_val`` with ``GroundingEvaluator``
  (R@1, R@5 of each image's colour phrases), with the main test's mapper.

To use another root or size, re-register both with the same values (their files are shared)::

    register_shapes(root="/data/shapes_small", num_train=100, num_val=20, replace=True)
    register_shapes_grounding(root="/data/shapes_small", num_train=100, num_val=20, replace=True)
"""

from detectron2.config import LazyCall as L
from detectron2.data import build_detection_test_loader, get_detection_dataset_dicts

from detr_ext.config import get_config
from detr_ext.data.datasets import register_shapes_grounding
from detr_ext.evaluation import GroundingEvaluator

# Registers shapes_train / shapes_val (root=None -> $DETR_EXT_DATASETS/shapes, 1000 / 200, seed 0).
dataloader = get_config("common/data/shapes.py").dataloader
register_shapes_grounding(
    root=None,
    num_train=1000,
    num_val=200,
    seed=0,
    num_negative_phrases=2,
    include_category_prompts=True,
    replace=True,
)

dataloader.train.dataset.names = "shapes_grounding_train"

dataloader.extra_tests = {
    "grounding": {
        "loader": L(build_detection_test_loader)(
            dataset=L(get_detection_dataset_dicts)(
                names="shapes_grounding_val", filter_empty=False
            ),
            # The main test's mapper, so a config that changes the test sizes changes both.
            mapper="${....test.mapper}",
            num_workers="${....test.num_workers}",
        ),
        "evaluator": L(GroundingEvaluator)(dataset_name="${..loader.dataset.names}"),
    }
}
