"""The runners: a .pt2 round trip, Instances like the eager model's from raw images, and
tools/demo.py --exported drawing the detections of --weights."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from detr_ext.export import TorchExportRunner, export_model, load_exported
from tests.tool_runs import load_script

from .models import (
    EXAMPLE_SIZE,
    TEST_SIZES,
    TWO_STAGE_DETECTIONS,
    assert_matches,
    detections_per_image,
    eager_outputs,
    make_batch,
    tiny_config,
)


def test_pt2_file_round_trip_keeps_the_operator_and_the_detections(exported_dino, tmp_path):
    """Saved and loaded: one operator node per attention, the metadata, the detections. This
    export takes heights and widths in multiples of 32 (``size_multiple``; its symbolic
    shapes are simpler, so it also loads faster), and the runner pads images up to them."""
    path = tmp_path / "dino.pt2"
    metadata = export_model(
        exported_dino.model, path, "torch_export", size_multiple=32, example_size=EXAMPLE_SIZE,
        config_file="tiny", thing_classes=["a", "b", "c"],
    )  # fmt: skip
    runner = load_exported(path)
    assert isinstance(runner, TorchExportRunner)
    assert runner.metadata == metadata
    assert (metadata.meta_architecture, metadata.num_classes, metadata.format) == (
        "DINO", 3, "torch_export",
    )  # fmt: skip
    assert (metadata.size_multiple, metadata.thing_classes) == (32, ["a", "b", "c"])
    msda = runner.program.graph.find_nodes(
        op="call_function", target=torch.ops.detr_ext.ms_deform_attn.default
    )
    assert len(msda) == 3
    for size in TEST_SIZES:  # multiples of 32, other than the example's
        assert size[0] % 32 == 0 and size[1] % 32 == 0 and size != EXAMPLE_SIZE
        images, image_sizes = make_batch(size, seed=1)
        expected = eager_outputs(exported_dino.model, images, image_sizes)
        assert_matches(expected, runner(images, image_sizes))
    with pytest.raises(ValueError, match="a multiple of 32; got 100"):
        runner(*make_batch((100, 128)))
    image = torch.randint(0, 256, (3, 70, 90), dtype=torch.uint8)
    (instances,) = runner.predict([image])  # padded to 96 x 96 inside
    assert instances.image_size == (70, 90)
    assert len(instances) == detections_per_image("dino", (96, 96))
    assert runner.pad_multiple == 32


def _eager_instances(model, images, output_sizes):
    inputs = [
        {"image": image, "height": height, "width": width}
        for image, (height, width) in zip(images, output_sizes, strict=True)
    ]
    with torch.no_grad():
        return [output["instances"] for output in model(inputs)]


def test_predict_gives_the_instances_of_the_eager_model(exported_dino):
    """Raw uint8 images of two sizes, batched (so one is padded), resized to other output
    sizes: the runner's normalization, padding and postprocessing are the model's."""
    generator = torch.Generator().manual_seed(3)
    images = [
        torch.randint(0, 256, (3, 70, 90), dtype=torch.uint8, generator=generator),
        torch.randint(0, 256, (3, 100, 84), dtype=torch.uint8, generator=generator),
    ]
    output_sizes = [(140, 180), (50, 42)]
    expected = _eager_instances(exported_dino.model, images, output_sizes)
    actual = exported_dino.onnx.predict(images, output_sizes)
    for want, got in zip(expected, actual, strict=True):
        assert got.image_size == want.image_size
        assert_matches(
            (want.pred_boxes.tensor, want.scores, want.pred_classes),
            (got.pred_boxes.tensor, got.scores, got.pred_classes),
        )


def load_demo():
    """``tools/demo.py`` as a module."""
    return load_script("tools/demo.py")


TINY_DINO_CONFIG = """
from tests.export.models import tiny_config

_cfg = tiny_config("dino")
model = _cfg.model
dataloader = _cfg.dataloader
train = _cfg.train
"""


@pytest.fixture
def demo_files(exported_dino, tmp_path, monkeypatch):
    monkeypatch.setenv("DETR_EXT_DATASETS", str(tmp_path / "datasets"))
    config = tmp_path / "tiny_dino.py"
    config.write_text(TINY_DINO_CONFIG)
    weights = tmp_path / "tiny_dino.pth"
    torch.save({"model": exported_dino.model.state_dict()}, weights)
    rng = np.random.default_rng(0)
    images = tmp_path / "images"
    images.mkdir()
    for name, size in (("a.png", (120, 160)), ("b.png", (150, 110))):
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(images / name)
    return config, weights, images


def test_demo_with_an_exported_model_draws_the_detections_of_the_weights(
    exported_dino, demo_files, tmp_path
):
    config, weights, images = demo_files
    demo = load_demo()
    common = ["--config-file", str(config), "--input", str(images), "--confidence-threshold", "0"]
    eager = demo.main([*common, "--weights", str(weights), "--output", str(tmp_path / "eager"),
                       "--device", "cpu"])  # fmt: skip
    exported = demo.main(
        [*common, "--exported", str(exported_dino.onnx_path), "--output", str(tmp_path / "onnx")]
    )
    assert [r["file"] for r in exported] == [r["file"] for r in eager]
    for want, got in zip(eager, exported, strict=True):
        assert len(got["detections"]) == len(want["detections"]) == TWO_STAGE_DETECTIONS
        for a, b in zip(want["detections"], got["detections"], strict=True):
            assert a["category_id"] == b["category_id"]
            assert abs(a["score"] - b["score"]) <= 1e-4  # json keeps 4 decimals
            assert np.allclose(a["bbox_xyxy"], b["bbox_xyxy"], atol=0.011)  # and 2 here
        with Image.open(tmp_path / "onnx" / got["visualization"]) as drawn:
            assert drawn.size == (got["width"], got["height"])
    assert json.loads((tmp_path / "onnx" / "skipped.json").read_text()) == []


def test_demo_wants_one_of_weights_and_exported(exported_dino, demo_files, tmp_path):
    config, weights, images = demo_files
    demo = load_demo()
    common = ["--config-file", str(config), "--input", str(images), "--output", str(tmp_path)]
    with pytest.raises(demo.DemoError, match="exactly one of --weights"):
        demo.main([*common, "--weights", str(weights), "--exported", str(exported_dino.onnx_path)])
    with pytest.raises(demo.DemoError, match="exactly one of --weights"):
        demo.main(common)
    with pytest.raises(demo.DemoError, match="--exported: expected a .pt2 or .onnx file"):
        demo.main([*common, "--exported", str(tmp_path / "missing.onnx")])


def write_rotated_photo(path) -> None:
    """A JPEG of 40 x 24 stored pixels with EXIF orientation 6 (shown 24 wide, 40 tall)."""
    pixels = np.random.default_rng(2).integers(0, 256, (24, 40, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(pixels).save(path, exif=exif)


@pytest.mark.parametrize(
    "overrides, expected_size",
    [
        ([], (40, 24)),  # EXIF orientation applied, the mappers' default
        (["dataloader.test.mapper.apply_exif_orientation=False"], (24, 40)),  # stored pixels
    ],
)
def test_demo_reads_images_as_the_test_mapper_does(
    exported_dino, demo_files, tmp_path, overrides, expected_size
):
    """With --weights and with --exported, the demo reads an image as the config's test
    mapper does: ``apply_exif_orientation=False`` gives the stored pixels (it was ignored,
    and the image was turned by its EXIF orientation whatever the config said)."""
    config, weights, _ = demo_files
    photo = tmp_path / "photo.jpg"
    write_rotated_photo(photo)
    demo = load_demo()
    common = ["--config-file", str(config), "--input", str(photo), "--confidence-threshold", "0"]
    eager = demo.main([*common, "--weights", str(weights), "--output", str(tmp_path / "eager"),
                       "--device", "cpu", *overrides])  # fmt: skip
    exported = demo.main([*common, "--exported", str(exported_dino.onnx_path),
                          "--output", str(tmp_path / "onnx"), *overrides])  # fmt: skip
    for records in (eager, exported):
        assert [(r["height"], r["width"]) for r in records] == [expected_size]
    assert [d["category_id"] for d in exported[0]["detections"]] == [
        d["category_id"] for d in eager[0]["detections"]
    ]


def test_without_a_config_images_are_read_as_recorded_at_export(exported_dino, tmp_path):
    """The export records whether the config's test mapper applies the EXIF orientation, and
    an ExportedPredictor without the config reads files that way (it always applied it)."""
    import onnx

    from detr_ext.export import METADATA_KEY, ExportedPredictor, config_metadata

    config = tiny_config("dino")
    assert config_metadata(config)["apply_exif_orientation"] is True
    config.dataloader.test.mapper.apply_exif_orientation = False
    assert config_metadata(config)["apply_exif_orientation"] is False

    photo = tmp_path / "photo.jpg"
    write_rotated_photo(photo)
    assert ExportedPredictor(exported_dino.onnx_path).read_image(photo).shape[:2] == (40, 24)
    model = onnx.load(str(exported_dino.onnx_path))
    entry = next(prop for prop in model.metadata_props if prop.key == METADATA_KEY)
    fields = json.loads(entry.value)
    assert fields["apply_exif_orientation"] is True
    entry.value = json.dumps({**fields, "apply_exif_orientation": False})
    onnx.save(model, str(tmp_path / "stored_pixels.onnx"))
    stored = ExportedPredictor(tmp_path / "stored_pixels.onnx")
    assert stored.read_image(photo).shape[:2] == (24, 40)
