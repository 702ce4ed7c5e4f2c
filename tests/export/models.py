"""Small random-weight detectors of every project for the export tests, and their inputs.

The models are the projects' shapes configs shrunk as in ``tests/projects/tiny_shapes.py``
(width 32, 1 encoder and 2 decoder layers, 10 queries); Deformable DETR is its two-stage
variant (box refinement and encoder proposals, the harder graph to export), and the two-stage
models have 100 queries and 300 detections, so that a 64 x 64 image has fewer feature
positions than queries.
"""

from __future__ import annotations

import copy

import torch
from detectron2.config import instantiate
from torch import Tensor, nn

from detr_ext.export import ExportableDetector, compare_outputs
from tests.projects.tiny_shapes import tiny_shapes_config

PROJECTS = ("detr", "deformable_detr", "dino", "align_detr")
DEFORMABLE_PROJECTS = ("deformable_detr", "dino", "align_detr")
EXAMPLE_SIZE = (96, 128)
"""The size of the example batch traced by torch.export."""
TEST_SIZES = ((64, 64), (160, 128))
"""Padded sizes the exported models run on: both differ from ``EXAMPLE_SIZE``."""
TOLERANCE = 1e-4


TWO_STAGE_QUERIES = 100
TWO_STAGE_DETECTIONS = 300


def tiny_config(project: str):
    cfg = tiny_shapes_config(project)
    if project == "deformable_detr":
        cfg.model.with_box_refine = True
        cfg.model.as_two_stage = True
    if project in DEFORMABLE_PROJECTS:
        # More queries than a 64 x 64 image has feature positions (8x8 + 4x4 + 2x2 = 84):
        # the exported graph must keep min(queries, positions) proposals, as eager does.
        cfg.model.num_queries = TWO_STAGE_QUERIES
        cfg.model.select_box_nums_for_evaluation = TWO_STAGE_DETECTIONS
    return cfg


def detections_per_image(project: str, size: tuple[int, int]) -> int:
    """``D`` of the tiny model's outputs at a padded ``size`` (stride 8, 16, 32 levels)."""
    if project not in DEFORMABLE_PROJECTS:
        return 10  # DETR: its queries
    positions = sum(-(-size[0] // s) * -(-size[1] // s) for s in (8, 16, 32))
    return min(TWO_STAGE_DETECTIONS, min(TWO_STAGE_QUERIES, positions) * 3)


def tiny_model(project: str, seed: int = 0) -> nn.Module:
    """The project's tiny model with the random initialisation of ``seed``, in eval mode."""
    torch.manual_seed(seed)
    return instantiate(tiny_config(project).model).eval()


def make_batch(size: tuple[int, int], seed: int = 0, batch: int = 2) -> tuple[Tensor, Tensor]:
    """A normalized batch padded to ``size`` whose last image is smaller (padding inside)."""
    generator = torch.Generator().manual_seed(seed)
    height, width = size
    images = torch.randn(batch, 3, height, width, generator=generator)
    image_sizes = torch.tensor([[height, width]] * batch)
    image_sizes[-1] = torch.tensor([height - 13, width - 22])
    return images, image_sizes


def eager_outputs(model: nn.Module, images: Tensor, image_sizes: Tensor) -> tuple[Tensor, ...]:
    with torch.no_grad():
        return ExportableDetector(model)(images, image_sizes)


def assert_well_conditioned(model: nn.Module, images: Tensor, image_sizes: Tensor) -> None:
    """Precondition of an equality test: eager float32 agrees with eager float64 on these
    inputs, so float32 rounding cannot swap near-equal scores in a top-k (see
    ``detr_ext.export.verify_runner``), and any exported difference is the export's."""
    float32 = eager_outputs(model, images, image_sizes)
    float64 = eager_outputs(copy.deepcopy(model).double(), images.double(), image_sizes)
    result = compare_outputs(float64, float32)
    assert result["boxes"] < TOLERANCE and result["classes_differing"] == 0, (
        f"ill-conditioned test inputs (eager float32 vs float64: {result}); pick another seed"
    )


def assert_matches(expected: tuple[Tensor, ...], actual: tuple[Tensor, ...]) -> None:
    """boxes [B, D, 4] and scores [B, D] within TOLERANCE, classes [B, D] equal."""
    result = compare_outputs(expected, actual)
    assert result["boxes"] < TOLERANCE, result
    assert result["scores"] < TOLERANCE, result
    assert result["classes_differing"] == 0, result
    assert actual[2].dtype == torch.int64
