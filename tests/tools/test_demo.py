"""tools/demo.py in subprocesses: the DETR shapes model with random weights on two generated
images (one given as a file, one through its folder), and the error for a missing path."""

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.config import LazyConfig, instantiate
from PIL import Image

from tests.tool_runs import run_tool

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
