"""Padding masks of a batched image at every feature level: its valid region is exactly the
feature map the image has alone (``resize_padding_mask`` with the level's stride). With
nearest resizing (DETR's and detrex's ``F.interpolate``), a 64 px wide image batched with a
120 px one kept 3 "valid" columns at stride 32 where it has 2, and was read in a frame wider
than it: DINO on the shapes data scored 13.1 AP at test batch 4 vs 22.1 at batch 1 (audit)."""

from __future__ import annotations

import pytest
import torch
from detectron2.config import instantiate

from detr_ext.layers import resize_padding_mask
from tests.projects.tiny_shapes import DEFORMABLE_PROJECTS, tiny_shapes_config

# (height, width): widths and heights that are not multiples of the strides (8 ... 64).
SIZES = [(80, 64), (40, 120), (97, 33)]


def _image(size):
    return {"image": torch.randint(0, 255, (3, *size), dtype=torch.uint8)}


def _valid_shapes(masks):
    """(rows, columns) of each image's valid region, checking that it is a rectangle."""
    shapes = []
    for mask in masks:
        valid = ~mask
        rows, columns = int(valid.any(1).sum()), int(valid.any(0).sum())
        assert valid[:rows, :columns].all() and not valid[rows:].any()
        assert not valid[:, columns:].any()
        shapes.append((rows, columns))
    return shapes


@pytest.mark.parametrize("project", DEFORMABLE_PROJECTS)
def test_each_level_mask_is_the_feature_map_of_the_image_alone(project):
    model = instantiate(tiny_shapes_config(project).model).eval()
    batch = [_image(size) for size in SIZES]
    with torch.no_grad():
        images, padding_mask = model.preprocess_image(batch)
        _, masks, _ = model.multi_level_inputs(images, padding_mask)
        alone = []
        for item in batch:
            single_images, single_mask = model.preprocess_image([item])
            feats, single_masks, _ = model.multi_level_inputs(single_images, single_mask)
            assert not any(mask.any() for mask in single_masks)
            alone.append([tuple(feat.shape[-2:]) for feat in feats])
    assert all(stride is not None for stride in model.level_strides(len(masks)))
    for level, mask in enumerate(masks):
        assert _valid_shapes(mask) == [shapes[level] for shapes in alone], level


@pytest.mark.parametrize("project", ["detr", "detr_segm"])
def test_detr_feature_mask_is_the_feature_map_of_the_image_alone(project):
    model = instantiate(tiny_shapes_config(project).model).eval()
    batch = [_image(size) for size in SIZES]
    with torch.no_grad():
        images, padding_mask = model.preprocess_image(batch)
        mask = model.forward_network(images, padding_mask).mask
        alone = []
        for item in batch:
            output = model.forward_network(*model.preprocess_image([item]))
            assert not output.mask.any()
            alone.append(tuple(output.features.shape[-2:]))
    assert model.feature_stride() is not None
    assert _valid_shapes(mask) == alone


def test_stride_rule_and_the_nearest_rule_without_a_stride():
    mask = torch.ones(2, 80, 120, dtype=torch.bool)
    mask[0, :80, :64] = False
    mask[1, :40, :120] = False
    exact = resize_padding_mask(mask, (3, 4), stride=32)
    assert _valid_shapes(exact) == [(3, 2), (2, 4)]  # ceil(80 / 32), ceil(64 / 32) ...
    nearest = resize_padding_mask(mask, (3, 4))
    assert _valid_shapes(nearest) == [(3, 3), (2, 4)]  # interpolate's: padding kept valid
    full = torch.zeros(1, 70, 90, dtype=torch.bool)
    assert not resize_padding_mask(full, (3, 3), stride=32).any()
