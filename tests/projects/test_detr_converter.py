"""DETR checkpoint converters: synthetic state_dicts with the exact names and shapes of the
detrex and facebookresearch/detr R50 checkpoints (tests/fixtures/state_dict_keys) must load
into our DETR-R50 with strict=True, and tensors must land at the expected keys."""

from pathlib import Path

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import LazyConfig, instantiate

import projects.detr.checkpoint  # noqa: F401  (registers the converters)
from detr_ext.checkpoint import get_converter
from projects.detr.checkpoint import coco91_class_rows
from tests.tool_runs import load_script

from .key_lists import read_key_list, synthetic_state_dict

REPO_ROOT = Path(__file__).resolve().parents[2]
R50_CONFIG = REPO_ROOT / "projects" / "detr" / "configs" / "models" / "detr_r50.py"
SHAPES_CONFIG = REPO_ROOT / "projects" / "detr" / "configs" / "detr_shapes.py"


def load_tool():
    """``tools/convert_checkpoint.py`` as a module."""
    return load_script("tools/convert_checkpoint.py")


@pytest.fixture(scope="module")
def detr_r50():
    return instantiate(LazyConfig.load(str(R50_CONFIG)).model)


@pytest.fixture(scope="module")
def facebook_conversion(detr_r50):
    """``(source, converted, report)`` for a synthetic facebookresearch checkpoint."""
    source = synthetic_state_dict(read_key_list("facebookresearch_detr_resnet50.txt"), seed=1)
    converter = get_converter("detr.facebookresearch")
    converted, report = converter.convert(source, detr_r50.state_dict())
    return source, converted, report


def _assert_loads_strictly(model, converted):
    target = model.state_dict()
    assert set(converted) == set(target)
    for key, value in converted.items():
        assert value.shape == target[key].shape, key
    result = model.load_state_dict(converted, strict=True)
    assert not result.missing_keys and not result.unexpected_keys


def test_fixture_sizes():
    assert len(read_key_list("detrex_detr_r50.txt")) == 459
    assert len(read_key_list("facebookresearch_detr_resnet50.txt")) == 458


def test_our_names_and_shapes_equal_detrex(detr_r50):
    expected = read_key_list("detrex_detr_r50.txt")
    ours = {key: tuple(value.shape) for key, value in detr_r50.state_dict().items()}
    assert ours == expected


def test_detrex_conversion_is_identity(detr_r50):
    source = synthetic_state_dict(read_key_list("detrex_detr_r50.txt"))
    converted, report = get_converter("detr.detrex").convert(source, detr_r50.state_dict())
    assert report.ok, report.summary()
    assert report.converted == {key: key for key in source}
    assert not (report.dropped_source_keys or report.filled_target_keys)
    _assert_loads_strictly(detr_r50, converted)
    state = detr_r50.state_dict()
    for key in ("transformer.decoder.post_norm_layer.weight", "backbone.res4.5.conv2.weight"):
        assert torch.equal(state[key], source[key])


def test_facebookresearch_conversion_loads_strictly(detr_r50):
    source = synthetic_state_dict(read_key_list("facebookresearch_detr_resnet50.txt"))
    source["backbone.0.body.bn1.num_batches_tracked"] = torch.tensor(5)
    converted, report = get_converter("detr.facebookresearch").convert(
        source, detr_r50.state_dict()
    )
    assert report.ok, report.summary()
    assert report.dropped_source_keys == ["backbone.0.body.bn1.num_batches_tracked"]
    assert report.filled_target_keys == ["criterion.empty_weight"]
    assert sorted(report.transformed_keys) == ["class_embed.bias", "class_embed.weight"]
    assert len(report.converted) == 458
    _assert_loads_strictly(detr_r50, converted)


@pytest.mark.parametrize(
    "source_key, target_key",
    [
        ("backbone.0.body.conv1.weight", "backbone.stem.conv1.weight"),
        ("backbone.0.body.bn1.running_var", "backbone.stem.conv1.norm.running_var"),
        ("backbone.0.body.layer1.0.downsample.0.weight", "backbone.res2.0.shortcut.weight"),
        ("backbone.0.body.layer3.0.downsample.1.bias", "backbone.res4.0.shortcut.norm.bias"),
        ("backbone.0.body.layer4.2.bn3.running_mean", "backbone.res5.2.conv3.norm.running_mean"),
        (
            "transformer.encoder.layers.3.self_attn.in_proj_weight",
            "transformer.encoder.layers.3.attentions.0.attn.in_proj_weight",
        ),
        ("transformer.encoder.layers.0.norm2.bias", "transformer.encoder.layers.0.norms.1.bias"),
        (
            "transformer.decoder.layers.5.multihead_attn.out_proj.weight",
            "transformer.decoder.layers.5.attentions.1.attn.out_proj.weight",
        ),
        (
            "transformer.decoder.layers.1.linear1.weight",
            "transformer.decoder.layers.1.ffns.0.layers.0.0.weight",
        ),
        (
            "transformer.decoder.layers.1.linear2.bias",
            "transformer.decoder.layers.1.ffns.0.layers.1.bias",
        ),
        (
            "transformer.decoder.layers.2.norm3.weight",
            "transformer.decoder.layers.2.norms.2.weight",
        ),
        ("transformer.decoder.norm.weight", "transformer.decoder.post_norm_layer.weight"),
        ("bbox_embed.layers.2.weight", "bbox_embed.layers.2.weight"),
        ("query_embed.weight", "query_embed.weight"),
        ("input_proj.weight", "input_proj.weight"),
    ],
)
def test_facebookresearch_values_land_at_expected_keys(facebook_conversion, source_key, target_key):
    source, converted, report = facebook_conversion
    assert report.converted[target_key] == source_key
    assert torch.equal(converted[target_key], source[source_key])


def test_facebookresearch_class_rows_follow_coco_ids(facebook_conversion):
    source, converted, _ = facebook_conversion
    weight, bias = converted["class_embed.weight"], converted["class_embed.bias"]
    assert weight.shape == (81, 256)
    torch.testing.assert_close(weight[0], source["class_embed.weight"][1])  # person: COCO id 1
    torch.testing.assert_close(weight[11], source["class_embed.weight"][13])  # stop sign: id 13
    torch.testing.assert_close(weight[79], source["class_embed.weight"][90])  # toothbrush: id 90
    torch.testing.assert_close(bias[80], source["class_embed.bias"][91])  # no-object
    assert coco91_class_rows()[:3] == [1, 2, 3] and len(coco91_class_rows()) == 81


def test_facebookresearch_report_flags_unknown_and_mismatched(detr_r50):
    source = synthetic_state_dict(read_key_list("facebookresearch_detr_resnet50.txt"))
    source["transformer.encoder.norm.weight"] = torch.zeros(256)  # a pre-norm-only key
    source["query_embed.weight"] = torch.zeros(300, 256)
    del source["input_proj.bias"]
    _, report = get_converter("detr.facebookresearch").convert(source, detr_r50.state_dict())
    assert not report.ok
    assert report.unused_source_keys == {
        "transformer.encoder.norm.weight": "transformer.encoder.norm.weight"
    }
    assert report.missing_target_keys == ["input_proj.bias"]
    assert report.shape_mismatches == {"query_embed.weight": ((300, 256), (100, 256))}
    assert "NOT OK" in report.summary()


def test_convert_checkpoint_tool_writes_loadable_checkpoint(tmp_path):
    main = load_tool().main
    model = instantiate(LazyConfig.load(str(SHAPES_CONFIG)).model)
    source = {key: torch.randn_like(value.float()) for key, value in model.state_dict().items()}
    del source["criterion.empty_weight"]  # filled from the model
    input_path, output_path = tmp_path / "detrex.pth", tmp_path / "out" / "converted.pth"
    torch.save({"model": source, "iteration": 10}, input_path)
    args = ["--from", "detr.detrex", "--config", str(SHAPES_CONFIG)]
    assert main([*args, str(input_path), str(output_path)]) == 0

    fresh = instantiate(LazyConfig.load(str(SHAPES_CONFIG)).model)
    DetectionCheckpointer(fresh).load(str(output_path))
    key = "transformer.encoder.layers.1.ffns.0.layers.1.weight"
    assert torch.equal(fresh.state_dict()[key], source[key])

    del source["query_embed.weight"]
    torch.save(source, input_path)
    bad_output = tmp_path / "bad.pth"
    assert main([*args, str(input_path), str(bad_output)]) == 1
    assert not bad_output.exists()


def test_convert_checkpoint_tool_lists_converters(capsys):
    main = load_tool().main
    assert main(["--list"]) == 0
    out = capsys.readouterr().out
    assert "detr.facebookresearch:" in out and "detr.detrex:" in out
