"""check_image_files and tools/check_dataset.py: every image readable to its end and of its
annotated size (EXIF orientation included), found before training instead of hours in."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from detr_ext.data.image_check import check_image_files
from tests.tool_runs import load_script


def write_image(path: Path, size=(40, 30), orientation: int | None = None) -> None:
    pixels = np.random.default_rng(0).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    if orientation is None:
        image.save(path)
    else:
        exif = Image.Exif()
        exif[274] = orientation
        image.save(path, exif=exif)


@pytest.fixture
def image_folder(tmp_path):
    """Images and COCO records: (file, annotated width, height) -> expected problem kind."""
    root = tmp_path / "images"
    root.mkdir()
    write_image(root / "good.png")
    write_image(root / "truncated.jpg")
    data = (root / "truncated.jpg").read_bytes()
    (root / "truncated.jpg").write_bytes(data[: len(data) // 2])  # a copy cut short
    write_image(root / "phone.jpg", orientation=6)  # turned 90 degrees when shown
    write_image(root / "phone_upright.jpg", orientation=6)
    write_image(root / "wrong_size.png")
    expected = {
        ("good.png", 40, 30): None,
        ("truncated.jpg", 40, 30): "unreadable",
        ("phone.jpg", 40, 30): "exif_orientation",  # labels drawn on the stored pixels
        ("phone_upright.jpg", 30, 40): None,  # labels drawn on the turned image
        ("wrong_size.png", 50, 30): "size_mismatch",
    }
    return root, expected


def records_of(root: Path, expected: dict) -> list[dict]:
    return [
        {"file_name": str(root / name), "image_id": index + 1, "width": width, "height": height}
        for index, (name, width, height) in enumerate(expected)
    ]


def test_each_kind_of_problem_is_found_and_named(image_folder):
    root, expected = image_folder
    missing = {"file_name": str(root / "gone.png"), "image_id": 9, "width": 4, "height": 4}
    problems = check_image_files([*records_of(root, expected), missing], workers=2)
    found = {(Path(p.file_name).name, p.kind) for p in problems}
    assert found == {
        *((name, kind) for (name, _, _), kind in expected.items() if kind),
        ("gone.png", "missing"),
    }
    details = {Path(p.file_name).name: p.detail for p in problems}
    assert "no such file" in details["gone.png"]
    assert "truncated" in details["truncated.jpg"]
    assert "EXIF orientation 6" in details["phone.jpg"]
    assert "apply_exif_orientation=False" in details["phone.jpg"]
    assert "annotated as 50x30 (width x height), the file is 40x30" in details["wrong_size.png"]


def test_32_bit_images_the_readers_refuse_are_unreadable(tmp_path):
    """A float depth map or a 32-bit integer image with values beyond 16 bit passed the check
    and then stopped training with HighBitDepthError."""
    depth = np.linspace(-1, 5, 12, dtype=np.float32).reshape(3, 4)
    Image.fromarray(depth, mode="F").save(tmp_path / "depth.tif")
    Image.fromarray(np.full((3, 4), 200000, np.int32), mode="I").save(tmp_path / "wide.tif")
    Image.fromarray(np.full((3, 4), 40000, np.int32), mode="I").save(tmp_path / "16bit.tif")
    records = [
        {"file_name": str(tmp_path / name), "image_id": index, "width": 4, "height": 3}
        for index, name in enumerate(("depth.tif", "wide.tif", "16bit.tif"))
    ]
    problems = {Path(p.file_name).name: p for p in check_image_files(records, workers=1)}
    assert set(problems) == {"depth.tif", "wide.tif"}  # 16-bit values read fine
    assert problems["depth.tif"].kind == "unreadable"
    assert "values from -1 to 5: expected 8-bit or 16-bit" in problems["depth.tif"].detail
    assert "values from 200000 to 200000" in problems["wide.tif"].detail


def test_headers_only_and_stored_pixels(image_folder):
    root, expected = image_folder
    records = records_of(root, expected)
    fast = {Path(p.file_name).name for p in check_image_files(records, decode=False)}
    assert fast == {"phone.jpg", "wrong_size.png"}  # the truncated file's header is intact
    # With apply_exif_orientation=False the stored pixels count: now the upright-labelled
    # phone image is the one that does not fit.
    stored = {
        (Path(p.file_name).name, p.kind)
        for p in check_image_files(records, apply_exif_orientation=False)
    }
    assert stored == {
        ("truncated.jpg", "unreadable"),
        ("phone_upright.jpg", "size_mismatch"),
        ("wrong_size.png", "size_mismatch"),
    }


def load_tool():
    """``tools/check_dataset.py`` as a module."""
    return load_script("tools/check_dataset.py")


def write_coco(path: Path, expected: dict) -> None:
    images = [
        {"id": index + 1, "file_name": name, "width": width, "height": height}
        for index, (name, width, height) in enumerate(expected)
    ]
    annotations = [
        {"id": index + 1, "image_id": index + 1, "category_id": 1, "bbox": [1, 1, 10, 10],
         "area": 100, "iscrowd": 0}
        for index in range(len(images))
    ]  # fmt: skip
    categories = [{"id": 1, "name": "thing"}]
    path.write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": categories})
    )


def test_tool_lists_the_problems_writes_a_report_and_sets_the_exit_status(
    image_folder, tmp_path, capsys
):
    root, expected = image_folder
    tool = load_tool()
    broken = tmp_path / "broken.json"
    write_coco(broken, expected)
    report = tmp_path / "report.json"
    status = tool.main(
        [
            "--json",
            str(broken),
            "--image-root",
            str(root),
            "--report",
            str(report),
            "--workers",
            "2",
        ]
    )
    out = capsys.readouterr().out
    assert status == 1
    assert "5 images checked" in out and "3 with problems" in out
    assert "1 unreadable, 1 exif_orientation, 1 size_mismatch" in out
    assert f"unreadable: {root / 'truncated.jpg'} (image_id=2)" in out
    saved = json.loads(report.read_text())["datasets"][str(broken)]
    assert saved["images"] == 5 and len(saved["problems"]) == 3

    clean = tmp_path / "clean.json"
    write_coco(clean, {key: kind for key, kind in expected.items() if kind is None})
    assert tool.main(["--json", str(clean), "--image-root", str(root)]) == 0
    assert "2 images checked" in capsys.readouterr().out

    with pytest.raises(tool.UsageError, match="--json needs --image-root"):
        tool.main(["--json", str(clean)])


def test_tool_lists_a_missing_file_as_one_more_problem_and_checks_the_others(
    image_folder, tmp_path, capsys
):
    """Registration refuses a json whose image files are missing; the tool lists each as a
    ``missing`` image (output and report), still checks every other image, and exits 1."""
    root, expected = image_folder
    tool = load_tool()
    with_missing = tmp_path / "with_missing.json"
    write_coco(with_missing, {**expected, ("gone.jpg", 40, 30): None})
    report = tmp_path / "report.json"
    argv = ["--json", str(with_missing), "--image-root", str(root), "--report", str(report)]
    assert tool.main([*argv, "--workers", "2"]) == 1
    out = capsys.readouterr().out
    assert "6 images checked" in out and "4 with problems" in out
    assert "1 missing, 1 unreadable, 1 exif_orientation, 1 size_mismatch" in out
    assert f"missing: {root / 'gone.jpg'} (image_id=6): no such file" in out
    assert f"unreadable: {root / 'truncated.jpg'} (image_id=2)" in out
    saved = json.loads(report.read_text())["datasets"][str(with_missing)]
    assert saved["images"] == 6
    kinds = {(Path(p["file_name"]).name, p["kind"]) for p in saved["problems"]}
    assert kinds == {
        ("gone.jpg", "missing"),
        ("truncated.jpg", "unreadable"),
        ("phone.jpg", "exif_orientation"),
        ("wrong_size.png", "size_mismatch"),
    }

    # Only missing files: still listed, exit 1, and --headers-only too.
    only_missing = tmp_path / "only_missing.json"
    write_coco(only_missing, {("good.png", 40, 30): None, ("gone.jpg", 40, 30): None})
    argv = ["--json", str(only_missing), "--image-root", str(root), "--headers-only"]
    assert tool.main(argv) == 1
    out = capsys.readouterr().out
    assert "2 images checked" in out and "1 with problems, 1 missing" in out


def test_tool_keeps_usage_errors_for_a_json_it_cannot_use(image_folder, tmp_path):
    """Exit status 2 stays for what is not an image problem: no such json, and a json that
    registration refuses for another reason too (named with the missing files)."""
    root, expected = image_folder
    tool = load_tool()
    with pytest.raises(tool.UsageError, match="expected a COCO json file"):
        tool.main(["--json", str(tmp_path / "nope.json"), "--image-root", str(root)])
    broken = tmp_path / "broken.json"
    write_coco(broken, {**expected, ("gone.jpg", 40, 30): None})
    content = json.loads(broken.read_text())
    content["annotations"][0]["category_id"] = 7  # not among the categories
    broken.write_text(json.dumps(content))
    with pytest.raises(tool.UsageError, match="(?s)image files missing.*gone.jpg.*category"):
        tool.main(["--json", str(broken), "--image-root", str(root)])


def test_tool_help_shows_the_whole_description():
    """--help printed only the docstring's first line, cut mid-sentence."""
    help_text = " ".join(load_tool().build_parser().format_help().split())
    assert "of the size its annotations were drawn for (EXIF orientation included)" in help_text
    assert "Exit status: 0 when every image is fine, 1 when some are not" in help_text


def test_tool_lists_a_config_datasets_missing_files_and_names_one_it_cannot_use(
    image_folder, tmp_path, monkeypatch, capsys
):
    """A config registers its datasets when loaded, which refuses missing image files: the tool
    lists them as ``missing`` with the other problems (exit 1), as with --json (it stopped with
    a usage error). A json refused for another reason stays a usage error naming it. Missing
    files outside the tool are still refused."""
    root, expected = image_folder
    monkeypatch.setenv("DETR_EXT_CACHE", str(tmp_path / "cache"))
    missing = tmp_path / "missing.json"
    write_coco(missing, {**expected, ("gone.jpg", 40, 30): None})

    def write_config(dataset: str, json_file: Path) -> Path:
        config = tmp_path / f"{dataset}.py"
        config.write_text(
            "from detr_ext.data.datasets import register_coco_format_dataset\n"
            f"register_coco_format_dataset({dataset!r}, {str(json_file)!r}, {str(root)!r})\n"
            f"dataloader = dict(train=dict(dataset=dict(names={dataset!r})))\n"
        )
        return config

    tool = load_tool()
    assert tool.main(["--config-file", str(write_config("check_tool_missing", missing))]) == 1
    out = capsys.readouterr().out
    assert "check_tool_missing (train, EXIF on): 6 images checked" in out and "1 missing" in out
    assert f"missing: {root / 'gone.jpg'} (image_id=6): no such file" in out

    from detr_ext.data.datasets import register_coco_format_dataset

    with pytest.raises(ValueError, match="image files missing under .*gone.jpg"):
        register_coco_format_dataset("check_tool_missing_strict", missing, root)

    broken = tmp_path / "broken.json"
    content = json.loads(missing.read_text())
    content["annotations"][0]["category_id"] = 7  # not among the categories
    broken.write_text(json.dumps(content))
    with pytest.raises(tool.UsageError, match="(?s)check_tool_broken.*category_id=7"):
        tool.main(["--config-file", str(write_config("check_tool_broken", broken))])


def test_tool_checks_each_split_as_its_mapper_reads_and_an_empty_training_set(
    image_folder, tmp_path, monkeypatch, capsys
):
    """--config-file: a mapper with apply_exif_orientation=False made the check pass a photo
    labelled upright (training then stopped with a size mismatch) and flag one labelled on the
    stored pixels; a training json without annotations passed (training then stopped with
    detectron2's bare 'No valid data found')."""
    root, _ = image_folder
    monkeypatch.setenv("DETR_EXT_CACHE", str(tmp_path / "cache"))
    stored = tmp_path / "stored.json"  # labels drawn on the stored pixels
    write_coco(stored, {("phone.jpg", 40, 30): None})
    upright = tmp_path / "upright.json"  # labels drawn on the turned image
    write_coco(upright, {("phone_upright.jpg", 30, 40): None})
    config = tmp_path / "no_exif.py"
    config.write_text(
        "from detr_ext.data.datasets import register_coco_format_dataset\n"
        "from detr_ext.data import DetrDatasetMapper\n"
        "from detectron2.config import LazyCall as L\n"
        f"register_coco_format_dataset('exif_stored', {str(stored)!r}, {str(root)!r})\n"
        f"register_coco_format_dataset('exif_upright', {str(upright)!r}, {str(root)!r})\n"
        "mapper = L(DetrDatasetMapper)(augmentation=[], is_train=True, "
        "apply_exif_orientation=False)\n"
        "test_mapper = L(DetrDatasetMapper)(augmentation=[], is_train=False)\n"
        "dataloader = dict(train=dict(dataset=dict(names='exif_stored'), mapper=mapper),\n"
        "                  test=dict(dataset=dict(names=['exif_upright']), mapper=test_mapper))\n"
    )
    tool = load_tool()
    assert tool.main(["--config-file", str(config), "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "exif_stored (train, EXIF off): 1 images checked in" in out
    assert "exif_upright (test, EXIF on): 1 images checked in" in out

    # --no-exif overrides the config: now the upright-labelled test image does not fit.
    assert tool.main(["--config-file", str(config), "--no-exif"]) == 1
    assert "exif_upright (test, EXIF off): 1 images checked" in capsys.readouterr().out

    empty = tmp_path / "empty.json"
    write_coco(empty, {("good.png", 40, 30): None})
    content = json.loads(empty.read_text())
    content["annotations"] = []
    empty.write_text(json.dumps(content))
    config.write_text(
        config.read_text()
        .replace("names='exif_stored'", "names='no_annotations'")
        .replace(
            "\nmapper = L(",
            f"\nregister_coco_format_dataset('no_annotations', {str(empty)!r}, {str(root)!r})\n"
            "mapper = L(",
        )
    )
    report = tmp_path / "report.json"
    assert tool.main(["--config-file", str(config), "--report", str(report)]) == 1
    out = capsys.readouterr().out
    assert "no_annotations (train, EXIF off): 1 images checked in" in out
    assert "no_annotations: none of the 1 images has an annotation" in out
    saved = json.loads(report.read_text())["datasets"]
    assert saved["no_annotations (train, EXIF off)"]["no_annotations"] is True
    assert saved["exif_upright (test, EXIF on)"]["no_annotations"] is False
    # The same json given with --json (no split known) is a note, not a problem.
    assert tool.main(["--json", str(empty), "--image-root", str(root)]) == 0
    assert "note: none of the 1 images has an annotation" in capsys.readouterr().out
