"""The generic state_dict conversion: ordered rules, drops, transforms, fills, the report."""

import pytest
import torch

from detr_ext.checkpoint import (
    ConversionReport,
    Converter,
    convert_state_dict,
    find_converters,
    get_converter,
    register_converter,
    rename_key,
)
from detr_ext.checkpoint.convert import _compile

TARGET = {
    "net.block1.weight": torch.zeros(2, 3),
    "net.block1.bias": torch.zeros(2),
    "head.weight": torch.zeros(4, 2),
    "loss.buffer": torch.arange(3.0),
}


def test_rules_apply_in_order_with_callable_replacement():
    rules = _compile(
        [
            (r"^body\.", "net."),
            (r"layer(\d)", lambda m: f"block{int(m.group(1)) + 1}"),
            (r"tracked$", None),
        ],
        "rules",
    )
    assert rename_key("body.layer0.weight", rules) == "net.block1.weight"
    assert rename_key("body.layer0.num_batches_tracked", rules) is None


def test_convert_report_categories():
    source = {
        "body.layer0.weight": torch.ones(2, 3),
        "body.layer0.bias": torch.ones(2),
        "body.layer0.num_batches_tracked": torch.tensor(1),
        "head.weight": torch.ones(5, 2),
        "extra.thing": torch.ones(1),
    }
    rules = [(r"num_batches_tracked$", None), (r"^body\.layer0\.", "net.block1.")]
    converted, report = convert_state_dict(
        source,
        rules,
        TARGET,
        transforms=[(r"head\.weight", lambda v, t: v[: t.shape[0]])],
        fill_from_target=[r"loss\..*"],
    )
    assert report.converted == {
        "net.block1.weight": "body.layer0.weight",
        "net.block1.bias": "body.layer0.bias",
        "head.weight": "head.weight",
    }
    assert report.dropped_source_keys == ["body.layer0.num_batches_tracked"]
    assert report.unused_source_keys == {"extra.thing": "extra.thing"}
    assert report.filled_target_keys == ["loss.buffer"]
    assert report.transformed_keys == ["head.weight"]
    assert report.shape_mismatches == {} and report.missing_target_keys == []
    assert not report.ok  # the unused source key
    assert list(converted) == list(TARGET)
    assert converted["head.weight"].shape == (4, 2)
    assert torch.equal(converted["loss.buffer"], TARGET["loss.buffer"])
    assert "unused source keys: 1" in report.summary()


def test_missing_and_mismatched_keys():
    source = {"net.block1.weight": torch.ones(3, 3), "head.weight": torch.ones(4, 2)}
    _, report = convert_state_dict(source, [], TARGET)
    assert report.shape_mismatches == {"net.block1.weight": ((3, 3), (2, 3))}
    assert report.missing_target_keys == ["net.block1.bias", "loss.buffer"]
    assert not report.ok


def test_two_sources_to_one_target_is_an_error():
    source = {"a.weight": torch.ones(4, 2), "b.weight": torch.ones(4, 2)}
    with pytest.raises(ValueError, match="both rename to 'head.weight'"):
        convert_state_dict(source, [(r"^[ab]\.", "head.")], TARGET)


def test_invalid_rule_is_reported():
    with pytest.raises(ValueError, match=r"rules\[0\] has an invalid regex"):
        convert_state_dict({}, [("(", "x")], TARGET)


def test_registry_round_trip_and_conflicts():
    converter = Converter(name="test.identity", description="identity", rules=())
    register_converter(converter)
    register_converter(converter)  # same object again: fine
    assert get_converter("test.identity") is converter
    other = Converter(name="test.identity", description="other", rules=((r"a", "b"),))
    with pytest.raises(ValueError, match="already registered"):
        register_converter(other)
    register_converter(other, replace=True)
    assert get_converter("test.identity") is other
    with pytest.raises(KeyError, match="no converter named 'test.missing'"):
        get_converter("test.missing")


def test_find_converters_by_project_or_source():
    for name in ("testproj_a.testsrc", "testproj_b.testsrc", "testproj_a.othersrc"):
        register_converter(Converter(name=name, description=name, rules=()))
    assert find_converters("testsrc") == ["testproj_a.testsrc", "testproj_b.testsrc"]
    assert find_converters("testproj_a") == ["testproj_a.othersrc", "testproj_a.testsrc"]
    assert find_converters("testproj_a.testsrcc")[0] == "testproj_a.testsrc"  # a typo
    # Found by `make mutate`: a stray dot is ignored; at most 3 spellings are suggested.
    assert find_converters("testproj_a.") == find_converters("testproj_a")
    assert find_converters(".testsrc") == find_converters("testsrc")
    for name in ("zzproj.src1", "zzproj.src2", "zzproj.src3", "zzproj.src4"):
        register_converter(Converter(name=name, description=name, rules=()))
    assert len(find_converters("zzproj.srcX")) == 3
    with pytest.raises(KeyError) as info:
        get_converter("testsrc")
    message = str(info.value)
    assert "did you mean one of ['testproj_a.testsrc', 'testproj_b.testsrc']" in message
    assert "'<project>.<source>'" in message


def test_summary_shows_renames_only_when_a_rule_renamed():
    source = {"extra.thing": torch.ones(1), "body.extra": torch.ones(1)}
    _, report = convert_state_dict(source, [(r"^body\.", "net.")], TARGET)
    lines = report.summary().splitlines()
    assert "  extra.thing" in lines
    assert "  body.extra (renamed to net.extra)" in lines
    assert not any("renamed to extra.thing" in line for line in lines)
    assert report.num_problems == 2 + len(TARGET)  # 2 unused, every target key missing
    assert report.num_matched == 0


def test_report_summary_lists_every_category_and_truncates():
    """Found by `make mutate`: every block of the summary in order (none overwritten), the
    truncation line, and the verdict."""
    report = ConversionReport(
        converted={"a": "a"},
        unused_source_keys={"u": "u"},
        dropped_source_keys=["d.num_batches_tracked"],
        missing_target_keys=[f"m{i}" for i in range(4)],
        filled_target_keys=["f"],
        shape_mismatches={"s": ((2,), (3,))},
        transformed_keys=["t"],
    )
    assert report.summary(max_keys=3).splitlines() == [
        "converted: 1",
        "transformed: 1",
        "  t",
        "filled from the target model: 1",
        "  f",
        "dropped source keys: 1",
        "  d.num_batches_tracked",
        "unused source keys: 1",
        "  u",
        "missing target keys: 4",
        "  m0",
        "  m1",
        "  m2",
        "  ... and 1 more",
        "shape mismatches: 1",
        "  s: converted [2] vs target [3]",
        "NOT OK",
    ]
    assert ConversionReport(converted={"a": "a"}).summary().splitlines()[-1] == "OK"
    assert "... and" not in report.summary(max_keys=4)


class TiedHeads(torch.nn.Module):
    """A head shared under two names, as DINO's output heads are also its decoder's."""

    def __init__(self) -> None:
        super().__init__()
        self.head = torch.nn.Linear(2, 2)
        self.decoder_head = self.head
        self.extra = torch.nn.Linear(2, 3)


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_ties_on_the_meta_device_and_missing_keys_there(device):
    """The config suggestions of tools/convert_checkpoint.py convert into models built on the
    meta device, where tensors have no memory to compare: keys the source lacks must stay
    missing there (they were all tied to one converted key, so a checkpoint of another variant
    'fit exactly'), and a parameter shared under two names is still converted once for both."""
    with torch.device(device):
        model = TiedHeads()
    source = {"head.weight": torch.ones(2, 2), "head.bias": torch.ones(2)}
    converted, report = convert_state_dict(source, [], model.state_dict(keep_vars=True))
    assert report.converted["decoder_head.weight"] == "head.weight"
    assert report.missing_target_keys == ["extra.weight", "extra.bias"] and not report.ok
    names = {f"{module}.{p}" for module in ("head", "decoder_head") for p in ("weight", "bias")}
    assert set(converted) == names

    # Without keep_vars a meta state dict shows no ties: the shared names are reported missing.
    if device == "meta":
        _, detached = convert_state_dict(source, [], model.state_dict())
        assert detached.missing_target_keys == [
            "decoder_head.weight", "decoder_head.bias", "extra.weight", "extra.bias"
        ]  # fmt: skip


def test_batchnorm_step_counters_are_filled_from_the_target():
    """The converters drop the source's num_batches_tracked (frozen-BN codebases have none):
    a model with trainable BatchNorm (dino_shapes) reported them as missing, NOT OK, and
    nothing was written, for a checkpoint with the very same names."""
    target = {"bn.weight": torch.ones(2), "bn.num_batches_tracked": torch.tensor(7)}
    source = {"bn.weight": torch.zeros(2), "bn.num_batches_tracked": torch.tensor(3)}
    converted, report = convert_state_dict(source, [(r"num_batches_tracked$", None)], target)
    assert report.ok and report.filled_target_keys == ["bn.num_batches_tracked"]
    assert converted["bn.num_batches_tracked"].item() == 7
