"""The facebookresearch/detr panoptic converter: a synthetic checkpoint with the exact names and
shapes of ``detr_resnet50_panoptic`` (tests/fixtures/state_dict_keys) must load into our
``DETRSegm``-R50 (projects/detr/configs/models/detr_segm_r50.py) with strict=True, nothing
missing, and with its tensors at the expected keys."""

from pathlib import Path

import pytest
import torch
from detectron2.config import LazyConfig, instantiate
from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES

import projects.detr.checkpoint  # noqa: F401  (registers the converters)
from detr_ext.checkpoint import get_converter
from projects.detr.checkpoint import coco_panoptic_class_rows

from .key_lists import read_key_list, synthetic_state_dict

REPO_ROOT = Path(__file__).resolve().parents[2]
SEGM_R50_CONFIG = REPO_ROOT / "projects" / "detr" / "configs" / "models" / "detr_segm_r50.py"
KEY_LIST = "facebookresearch_detr_resnet50_panoptic.txt"


@pytest.fixture(scope="module")
def detr_segm_r50():
    return instantiate(LazyConfig.load(str(SEGM_R50_CONFIG)).model)


@pytest.fixture(scope="module")
def conversion(detr_segm_r50):
    source = synthetic_state_dict(read_key_list(KEY_LIST), seed=2)
    converter = get_converter("detr.facebookresearch_panoptic")
    converted, report = converter.convert(source, detr_segm_r50.state_dict())
    return source, converted, report


def test_fixture_size():
    assert len(read_key_list(KEY_LIST)) == 490


def test_panoptic_conversion_is_complete_and_loads_strictly(detr_segm_r50, conversion):
    source, converted, report = conversion
    assert report.ok, report.summary()
    assert not report.unused_source_keys and not report.missing_target_keys
    assert report.filled_target_keys == ["criterion.empty_weight"]
    assert len(report.converted) == len(source) == 490
    assert sorted(report.transformed_keys) == ["class_embed.bias", "class_embed.weight"]
    target = detr_segm_r50.state_dict()
    assert set(converted) == set(target)
    result = detr_segm_r50.load_state_dict(converted, strict=True)
    assert not result.missing_keys and not result.unexpected_keys


@pytest.mark.parametrize(
    "source_key, target_key",
    [
        ("detr.backbone.0.body.layer3.5.bn2.weight", "backbone.res4.5.conv2.norm.weight"),
        ("detr.backbone.0.body.layer1.0.conv1.weight", "backbone.res2.0.conv1.weight"),
        (
            "detr.transformer.decoder.layers.4.multihead_attn.in_proj_weight",
            "transformer.decoder.layers.4.attentions.1.attn.in_proj_weight",
        ),
        ("detr.transformer.decoder.norm.bias", "transformer.decoder.post_norm_layer.bias"),
        ("detr.input_proj.weight", "input_proj.weight"),
        ("detr.query_embed.weight", "query_embed.weight"),
        ("bbox_attention.k_linear.weight", "bbox_attention.k_linear.weight"),
        ("mask_head.lay1.weight", "mask_head.lay1.weight"),
        ("mask_head.gn5.bias", "mask_head.gn5.bias"),
        ("mask_head.adapter3.weight", "mask_head.adapter3.weight"),
        ("mask_head.out_lay.bias", "mask_head.out_lay.bias"),
    ],
)
def test_values_land_at_expected_keys(conversion, source_key, target_key):
    source, converted, report = conversion
    assert report.converted[target_key] == source_key
    assert torch.equal(converted[target_key], source[source_key])


def test_class_rows_follow_panoptic_category_ids(conversion):
    source, converted, _ = conversion
    weight, bias = converted["class_embed.weight"], converted["class_embed.bias"]
    assert weight.shape == (134, 256) and len(COCO_CATEGORIES) == 133
    rows = coco_panoptic_class_rows()
    assert rows[0] == 1 and rows[80] == 92 and rows[-2] == 200 and rows[-1] == 250
    fb_weight = source["detr.class_embed.weight"]
    torch.testing.assert_close(weight[0], fb_weight[1])  # person: id 1
    torch.testing.assert_close(weight[79], fb_weight[90])  # toothbrush: id 90 (last thing)
    torch.testing.assert_close(weight[80], fb_weight[92])  # banner: id 92 (first stuff)
    torch.testing.assert_close(weight[132], fb_weight[200])  # rug-merged: id 200
    torch.testing.assert_close(bias[133], source["detr.class_embed.bias"][250])  # no-object
