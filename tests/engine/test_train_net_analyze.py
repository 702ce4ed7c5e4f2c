"""``tools/train_net.py --analyze``: the evaluation writes the error analysis (TIDE errors,
confusion matrix, their plot) next to its results. The evaluator's analysis itself is tested in
``tests/evaluation/test_coco_evaluator.py``."""

from __future__ import annotations

import json

from PIL import Image

from tests.tool_runs import run_tool, tiny_shapes_config


def test_train_net_analyze_writes_the_analysis(tmp_path):
    """``--eval-only --allow-random-weights --analyze`` on dino_shapes, 3 val images."""
    config = tiny_shapes_config("dino", tmp_path)
    output_dir = tmp_path / "run"
    result = run_tool(
        "train_net.py",
        [
            "--config-file", str(config), "--eval-only", "--allow-random-weights", "--analyze",
            f"train.output_dir={output_dir}",
        ],
        cwd=tmp_path,
        datasets=tmp_path / "datasets",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr[-6000:]
    analysis_dir = output_dir / "inference" / "analysis"
    with Image.open(analysis_dir / "bbox_analysis.png") as image:
        assert image.format == "PNG" and image.width > 0
    confusion = json.loads((analysis_dir / "bbox_confusion.json").read_text())
    assert len(confusion["matrix"]) == 4  # circle, square, triangle, BG
    assert (analysis_dir / "bbox_tide.json").is_file()
