"""tools/demo.py in subprocesses: the DETR shapes model with random weights on two generated
images (one given as a file, one through its folder), the error for a missing path, unreadable
images (skipped and listed), an interrupted run (detections kept) and a checkpoint whose
class head does not fit the config."""

import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.config import LazyConfig, instantiate
from PIL import Image

from tests.tool_runs import load_script, run_tool

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIG = REPO_ROOT / "projects" / "detr" / "configs" / "detr_shapes.py"
SHAPES_NAMES = {3: "circle", 7: "square", 11: "triangle"}


def run_demo(work_dir: Path, *args: str) -> subprocess.CompletedProcess:
    # The config only registers shapes: its datasets are never loaded.
    config = ["--config-file", str(CONFIG)]
    return run_tool("demo.py", [*config, *args], cwd=work_dir, datasets=work_dir / "datasets")


@pytest.fixture(scope="module")
def demo_inputs(tmp_path_factory):
    """A random-weight checkpoint, an image file and a folder with one more image."""
    work_dir = tmp_path_factory.mktemp("demo")
    weights = work_dir / "random_detr_shapes.pth"
    torch.manual_seed(0)
    torch.save({"model": instantiate(LazyConfig.load(str(CONFIG)).model).state_dict()}, weights)
    rng = np.random.default_rng(0)
    image_file = work_dir / "first.jpg"
    Image.fromarray(rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)).save(image_file)
    folder = work_dir / "folder"
    folder.mkdir()
    Image.fromarray(rng.integers(0, 256, (80, 60, 3), dtype=np.uint8)).save(folder / "second.png")
    (folder / "notes.txt").write_text("not an image, not picked up")
    return work_dir, weights, image_file, folder


def test_demo_writes_drawings_and_detections(demo_inputs):
    work_dir, weights, image_file, folder = demo_inputs
    output = work_dir / "out"
    result = run_demo(
        work_dir, "--weights", str(weights), "--input", str(image_file), str(folder),
        "--output", str(output), "--confidence-threshold", "0.0", "--device", "cpu",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr[-6000:]

    for name, size in (("first.png", (128, 96)), ("second.png", (60, 80))):
        with Image.open(output / name) as drawn:
            assert drawn.size == size  # (width, height) of the input image

    records = json.loads((output / "detections.json").read_text())
    assert [(r["file"], r["height"], r["width"]) for r in records] == [
        (str(image_file), 96, 128),
        (str(folder / "second.png"), 80, 60),
    ]
    for record in records:
        assert set(record) == {"file", "height", "width", "visualization", "detections"}
        detections = record["detections"]
        assert len(detections) == 30  # every DETR query, with threshold 0
        scores = [d["score"] for d in detections]
        assert scores == sorted(scores, reverse=True)
        for detection in detections:
            assert set(detection) == {"bbox_xyxy", "score", "category_id", "category_name"}
            x0, y0, x1, y1 = detection["bbox_xyxy"]
            assert 0 <= x0 <= x1 <= record["width"] and 0 <= y0 <= y1 <= record["height"]
            # The dataset's own ids (3, 7, 11), not the model's contiguous 0, 1, 2.
            assert SHAPES_NAMES[detection["category_id"]] == detection["category_name"]


def test_demo_missing_input_fails_with_a_clear_message(demo_inputs):
    work_dir, weights, image_file, _ = demo_inputs
    missing = work_dir / "no_such_image.jpg"
    result = run_demo(
        work_dir, "--weights", str(weights), "--input", str(image_file), str(missing),
        "--output", str(work_dir / "never"),
    )  # fmt: skip
    assert result.returncode != 0
    assert f"got missing path {str(missing)!r}" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (work_dir / "never").exists()


def write_bad_images(folder: Path, good_image: Path) -> list[Path]:
    """A truncated JPEG (the first half of a real one) and a text file named .jpg."""
    folder.mkdir()
    rng = np.random.default_rng(1)
    real_jpeg = folder / "whole.jpg"
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(real_jpeg)
    truncated = folder / "b_truncated.jpg"
    data = real_jpeg.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    real_jpeg.unlink()
    not_an_image = folder / "c_notes.jpg"
    not_an_image.write_text("not an image")
    return [truncated, not_an_image]


def test_demo_skips_unreadable_images_and_lists_them(demo_inputs, tmp_path):
    work_dir, weights, image_file, _ = demo_inputs
    bad_images = write_bad_images(tmp_path / "mixed", image_file)
    output = tmp_path / "out"
    result = run_demo(
        work_dir, "--weights", str(weights), "--input", str(image_file), str(tmp_path / "mixed"),
        "--output", str(output), "--device", "cpu",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr[-6000:]
    records = json.loads((output / "detections.json").read_text())
    assert [record["file"] for record in records] == [str(image_file)]
    skipped = json.loads((output / "skipped.json").read_text())
    assert [item["file"] for item in skipped] == [str(path) for path in bad_images]
    for item in skipped:
        assert f"could not read image file {item['file']!r}" in item["error"]
    assert "Skipped 2 of 3 images" in result.stdout + result.stderr  # the log: stdout
    assert (output / "first.png").is_file()


def test_demo_without_any_readable_image_fails(demo_inputs, tmp_path):
    work_dir, weights, image_file, _ = demo_inputs
    write_bad_images(tmp_path / "bad", image_file)
    output = tmp_path / "out"
    result = run_demo(
        work_dir, "--weights", str(weights), "--input", str(tmp_path / "bad"),
        "--output", str(output), "--device", "cpu",
    )  # fmt: skip
    assert result.returncode != 0
    assert "none of the 2 images could be processed" in result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert json.loads((output / "detections.json").read_text()) == []
    assert len(json.loads((output / "skipped.json").read_text())) == 2


def load_demo():
    """``tools/demo.py`` as a module."""
    return load_script("tools/demo.py")


def test_demo_keeps_detections_done_before_an_interruption(demo_inputs, tmp_path, monkeypatch):
    """Ctrl-C (KeyboardInterrupt) on the second image: the first image's detections are in
    detections.json all the same."""
    from detr_ext.engine.predictor import Predictor

    work_dir, weights, image_file, folder = demo_inputs
    run_predictor = Predictor.predict_outputs
    calls = []

    def interrupt_second_image(self, image, prompt=None):
        calls.append(image.shape)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return run_predictor(self, image, prompt)

    monkeypatch.setattr(Predictor, "predict_outputs", interrupt_second_image)
    monkeypatch.setenv("DETR_EXT_DATASETS", str(work_dir / "datasets"))
    output = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        load_demo().main(
            ["--config-file", str(CONFIG), "--weights", str(weights), "--input", str(image_file),
             str(folder), "--output", str(output), "--device", "cpu",
             "--confidence-threshold", "0.0"]
        )  # fmt: skip
    records = json.loads((output / "detections.json").read_text())
    assert [record["file"] for record in records] == [str(image_file)]
    assert len(records[0]["detections"]) > 0


def test_demo_rejects_a_checkpoint_with_another_class_head(demo_inputs, tmp_path):
    work_dir, _, image_file, _ = demo_inputs
    cfg = LazyConfig.load(str(CONFIG))
    cfg.model.num_classes = 5
    weights = tmp_path / "five_classes.pth"
    torch.save({"model": instantiate(cfg.model).state_dict()}, weights)
    result = run_demo(
        work_dir, "--weights", str(weights), "--input", str(image_file),
        "--output", str(tmp_path / "out"), "--device", "cpu",
    )  # fmt: skip
    assert result.returncode != 0
    assert "class_embed.weight: [6, " in result.stderr and "model.num_classes" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("problem", ["truncated", "missing"])
def test_demo_names_weights_it_cannot_read_without_a_traceback(demo_inputs, tmp_path, problem):
    work_dir, _, image_file, _ = demo_inputs
    weights = tmp_path / "model_final.pth"
    if problem == "truncated":  # a copy cut short
        torch.save({"model": instantiate(LazyConfig.load(str(CONFIG)).model).state_dict()}, weights)
        weights.write_bytes(weights.read_bytes()[:1000])
    result = run_demo(
        work_dir, "--weights", str(weights), "--input", str(image_file),
        "--output", str(tmp_path / "out"), "--device", "cpu",
    )  # fmt: skip
    assert result.returncode != 0
    expected = "Cannot read checkpoint" if problem == "truncated" else "missing path"
    assert expected in result.stderr and str(weights) in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr


def test_demo_refuses_to_draw_over_its_inputs_and_other_bad_arguments(demo_inputs, tmp_path):
    """--output set to the input folder replaced each input image by its drawing (the same
    stem, .png), exit 0; an --output that is a file, a threshold outside [0, 1] and a device
    torch cannot use ended in tracebacks or in runs that draw nothing. All are refused before
    the model is loaded, and nothing is written."""
    _, weights, image_file, folder = demo_inputs
    demo = load_script("tools/demo.py")
    before = (folder / "second.png").read_bytes()
    common = ["--config-file", str(CONFIG), "--weights", str(weights)]
    cases = [
        (["--input", str(folder), "--output", str(folder)], "would overwrite input images"),
        (["--input", str(folder / "second.png"), "--output", str(folder / "..") + "/folder"],
         "would overwrite input images"),
        (["--input", str(image_file), "--output", str(image_file)], "expected a folder"),
        (["--input", str(image_file), "--output", str(tmp_path / "out"),
          "--confidence-threshold", "50"], "expected a score in [0, 1], got 50"),
        (["--input", str(image_file), "--output", str(tmp_path / "out"), "--device", "gpu0"],
         "expected cpu, cuda"),
    ]  # fmt: skip
    if not torch.cuda.is_available():
        cases.append(
            (["--input", str(image_file), "--output", str(tmp_path / "out"), "--device", "cuda"],
             "torch sees no GPU")
        )  # fmt: skip
    for argv, message in cases:
        with pytest.raises(demo.DemoError, match=re.escape(message)):
            demo.main([*common, *argv])
    assert (folder / "second.png").read_bytes() == before
    assert not (tmp_path / "out").exists()
