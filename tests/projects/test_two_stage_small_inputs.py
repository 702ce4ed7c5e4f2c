"""Two-stage detectors (DINO, Align-DETR, two-stage Deformable DETR) on images whose feature
maps have fewer positions than the model has proposals: a 4 x 2000 px image (and 2000 x 4) is
resized to 1 x 288 px by the shapes test resize, i.e. ~63 positions over 3 levels for 100
proposals. The proposal top-k keeps every position instead of failing; real shapes models with
random weights, through the Predictor (the demo's path)."""

from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.config import LazyConfig, instantiate
from detectron2.structures import Boxes, Instances

from detr_ext.engine.predictor import Predictor

REPO_ROOT = Path(__file__).resolve().parents[2]
TWO_STAGE_MODELS = {
    "dino": ("projects/dino/configs/dino_shapes.py", []),
    "align_detr": ("projects/align_detr/configs/align_detr_shapes.py", []),
    # 50 queries would fit the ~112 positions of its 512 px test resize: ask for more.
    "deformable_detr_two_stage": (
        "projects/deformable_detr/configs/deformable_detr_shapes.py",
        ["model.with_box_refine=True", "model.as_two_stage=True", "model.num_queries=150"],
    ),
}


def load_config(name: str):
    path, overrides = TWO_STAGE_MODELS[name]
    return LazyConfig.apply_overrides(LazyConfig.load(str(REPO_ROOT / path)), overrides)


@pytest.mark.parametrize("name", list(TWO_STAGE_MODELS))
def test_extreme_aspect_ratios_run_through_the_predictor(name, tmp_path):
    cfg = load_config(name)
    weights = tmp_path / "random.pth"
    torch.save({"model": instantiate(cfg.model).state_dict()}, weights)
    predictor = Predictor(cfg, weights, device="cpu")
    transformer = predictor.model.transformer
    positions = []
    hook = transformer.register_forward_pre_hook(
        lambda _, args: positions.append(sum(f.shape[-2] * f.shape[-1] for f in args[0]))
    )
    rng = np.random.default_rng(0)
    try:
        for height, width in ((4, 2000), (2000, 4)):
            image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
            instances = predictor(image)
            assert instances.image_size == (height, width)
            assert len(instances) > 0 and torch.isfinite(instances.scores).all()
            boxes = instances.pred_boxes.tensor
            assert (boxes[:, 2] <= width).all() and (boxes[:, 3] <= height).all()
    finally:
        hook.remove()
    # The case under test: fewer positions than proposals.
    assert positions and all(n < transformer.two_stage_num_proposals for n in positions)


def test_dino_training_step_on_a_thin_image():
    """Training with denoising queries on an image with fewer positions than proposals: the
    decoder's self-attention mask is cut to the proposals kept."""
    model = instantiate(load_config("dino").model)
    model.train()
    instances = Instances((8, 300))
    instances.gt_boxes = Boxes(torch.tensor([[10.0, 1.0, 60.0, 7.0]]))
    instances.gt_classes = torch.tensor([1])
    image = torch.randint(0, 256, (3, 8, 300), dtype=torch.uint8)
    positions = []
    hook = model.transformer.register_forward_pre_hook(
        lambda _, args: positions.append(sum(f.shape[-2] * f.shape[-1] for f in args[0]))
    )
    try:
        losses = model([{"image": image, "instances": instances}])
    finally:
        hook.remove()
    assert positions[0] < model.transformer.two_stage_num_proposals
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
