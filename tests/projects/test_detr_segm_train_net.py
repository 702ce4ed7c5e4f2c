"""tools/train_net.py with DETR's segmentation configs on CPU, in subprocesses: two training
iterations from scratch, then the evaluation at the end: box and mask AP for
projects/detr/configs/detr_segm_shapes.py, panoptic quality (and the things' box and mask AP)
for projects/detr/configs/detr_panoptic_shapes.py. The configs' own models; the shapes data
shrunk to a few images in a temp dir (tests/tool_runs.py)."""

import json
from pathlib import Path

from tests.tool_runs import TINY_SHAPES_CONFIG, run_tool

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIGS = REPO_ROOT / "projects" / "detr" / "configs"

PANOPTIC_DATA = """
from detr_ext.data.datasets import register_shapes_panoptic

register_shapes_panoptic(root=None, num_train=6, num_val=3, seed=0, replace=True)
"""


def train_two_iterations(tmp_path: Path, base: Path, extra: str = "") -> tuple[str, list[dict]]:
    """Run train_net on ``base`` shrunk by TINY_SHAPES_CONFIG (+ ``extra``) with its output
    in ``tmp_path / "output"`` and data in ``tmp_path / "datasets"``; the printed output and
    the records of metrics.json."""
    config = tmp_path / f"{base.stem}_tiny.py"
    config.write_text(TINY_SHAPES_CONFIG.format(base=str(base)) + extra + "train.log_period = 1\n")
    output_dir = tmp_path / "output"
    result = run_tool(
        "train_net.py",
        ["--config-file", str(config), f"train.output_dir={output_dir}"],
        cwd=tmp_path,
        datasets=tmp_path / "datasets",
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"train_net failed:\n{output[-8000:]}"
    lines = (output_dir / "metrics.json").read_text().splitlines()
    return output, [json.loads(line) for line in lines if line.strip()]


def test_segm_shapes_trains_and_evaluates_box_and_mask_ap(tmp_path):
    output, records = train_two_iterations(tmp_path, CONFIGS / "detr_segm_shapes.py")
    assert "Starting training from iteration 0" in output
    losses = [r for r in records if "total_loss" in r]
    assert [r["iteration"] for r in losses] == [0, 1]
    assert all("loss_mask" in r and "loss_dice" in r for r in losses)
    assert "Evaluation results for bbox" in output and "Evaluation results for segm" in output
    assert any("bbox/AP" in r and "segm/AP" in r for r in records)
    # The evaluated masks are RLEs at each image's original size.
    images = json.loads((tmp_path / "datasets/shapes/annotations/instances_val.json").read_text())
    sizes = {image["id"]: [image["height"], image["width"]] for image in images["images"]}
    results = json.loads((tmp_path / "output/inference/coco_instances_results.json").read_text())
    assert results and {r["image_id"] for r in results} == set(sizes)
    assert all(r["segmentation"]["size"] == sizes[r["image_id"]] for r in results)


def test_panoptic_shapes_trains_and_evaluates_pq(tmp_path):
    output, records = train_two_iterations(
        tmp_path, CONFIGS / "detr_panoptic_shapes.py", PANOPTIC_DATA
    )
    losses = [r for r in records if "total_loss" in r]
    assert [r["iteration"] for r in losses] == [0, 1]
    assert all("loss_mask" in r for r in losses)
    evaluated = [r for r in records if "panoptic_seg/PQ" in r]
    assert evaluated, f"no PQ in metrics.json:\n{output[-4000:]}"
    assert {"panoptic_seg/PQ_th", "panoptic_seg/PQ_st", "segm/AP"} <= set(evaluated[-1])
