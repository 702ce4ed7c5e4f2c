"""tools/visualize_data.py: the dataset as annotated and as the mapper hands it to the model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from detectron2.data import MetadataCatalog
from detectron2.structures import Boxes, Instances
from PIL import Image

from tests.tool_runs import REPO_ROOT, TINY_SHAPES_CONFIG, load_script


@pytest.fixture()
def tiny_config(tmp_path, monkeypatch):
    monkeypatch.setenv("DETR_EXT_DATASETS", str(tmp_path / "datasets"))
    base = REPO_ROOT / "projects/detr/configs/detr_segm_shapes.py"
    config = tmp_path / "tiny_detr_segm_shapes.py"
    config.write_text(TINY_SHAPES_CONFIG.format(base=str(base)))
    return config


def _val_images(tmp_path) -> dict[int, tuple[int, int]]:
    annotations = json.loads(
        (tmp_path / "datasets/shapes/annotations/instances_val.json").read_text()
    )
    return {image["id"]: (image["height"], image["width"]) for image in annotations["images"]}


def test_annotations_are_drawn_in_the_original_frame(tiny_config, tmp_path):
    tool = load_script("tools/visualize_data.py")
    out = tmp_path / "vis"
    written = tool.main(
        ["--config-file", str(tiny_config), "--source", "annotation", "--split", "test"]
        + ["--output-dir", str(out), "--num-images", "2"]
    )
    sizes = _val_images(tmp_path)
    assert len(written) == 2
    for path in written:
        height, width = sizes[int(path.stem)]
        assert Image.open(path).size == (width, height)


def test_dataloader_images_are_what_the_mapper_returns(tiny_config, tmp_path):
    from detectron2.config import LazyConfig, instantiate

    tool = load_script("tools/visualize_data.py")
    out = tmp_path / "vis"
    written = tool.main(
        ["--config-file", str(tiny_config), "--source", "dataloader", "--split", "test"]
        + ["--output-dir", str(out), "--num-images", "3"]
    )
    assert len(written) == 3
    test_loader = LazyConfig.load(str(tiny_config)).dataloader.test
    records, mapper = instantiate(test_loader.dataset), instantiate(test_loader.mapper)
    for path, record in zip(written, records, strict=False):
        mapped = mapper(dict(record))
        assert Image.open(path).size == tuple(mapped["image"].shape[-1:-3:-1])  # (W, H)


def test_mapped_boxes_are_drawn_where_they_are():
    image = torch.full((3, 60, 80), 30, dtype=torch.uint8)
    instances = Instances((60, 80))
    instances.gt_boxes = Boxes(torch.tensor([[10.0, 10.0, 50.0, 40.0]]))
    instances.gt_classes = torch.tensor([0])
    metadata = MetadataCatalog.get("_visualize_data_test")
    metadata.set(thing_classes=["thing"])
    drawing = load_script("tools/visualize_data.py").draw_mapped(
        {"image": image, "instances": instances}, metadata
    )
    assert drawing.shape == (60, 80, 3)
    changed = np.abs(drawing.astype(int) - 30).sum(-1) > 30
    assert changed[10:41, 10].any() and changed[10:41, 50].any()  # the box's left / right edges
    assert not changed[55:, 60:].any()  # far from the box and its label


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["--num-images", "0"], "positive count"),
        (["--split", "test", "not_an_override"], "key=value"),
        (["--output-dir", __file__], "expected a folder, got the file"),
    ],
)
def test_usage_errors(tiny_config, tmp_path, argv, match):
    tool = load_script("tools/visualize_data.py")
    with pytest.raises(tool.VisualizeError, match=match):
        tool.main(
            ["--config-file", str(tiny_config), "--source", "annotation"]
            + ["--output-dir", str(tmp_path / "vis"), *argv]
        )


def test_annotations_mixing_polygons_and_boxes_on_images_read_as_the_mappers_do(tmp_path):
    """Labeling-tool exports mix annotations with and without a polygon in one image:
    detectron2's draw_dataset_dict raised KeyError 'segmentation' on them. The image is read as
    the mappers read it: a 16-bit PNG scaled to 8 bit (it was drawn white), EXIF orientation
    only when the mapper applies it."""
    from detectron2.data import Metadata
    from detectron2.structures import BoxMode

    tool = load_script("tools/visualize_data.py")
    metadata = Metadata(thing_classes=["a", "b"])
    deep = tmp_path / "deep.png"
    Image.fromarray(np.full((40, 60), 30 * 257, dtype=np.uint16)).save(deep)
    annotations = [
        {"bbox": [5, 5, 20, 20], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 0,
         "segmentation": [[5, 5, 25, 5, 25, 25]]},
        {"bbox": [30, 10, 20, 20], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 1},
    ]  # fmt: skip
    record = {"file_name": str(deep), "image_id": 1, "height": 40, "width": 60}
    drawing = tool.draw_annotations({**record, "annotations": annotations}, metadata)
    assert drawing.shape == (40, 60, 3)
    assert (drawing[38, 2] == 30).all()  # a pixel away from the drawings: 30, not 255
    plain = tool.draw_annotations({**record, "annotations": []}, metadata)
    assert (plain != drawing).any(axis=2)[10:30, 30:50].any()  # the box without a polygon

    photo = tmp_path / "photo.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # "turn 90 degrees": shown 24 wide, 40 tall
    Image.fromarray(np.zeros((24, 40, 3), dtype=np.uint8)).save(photo, exif=exif)
    record = {"file_name": str(photo), "image_id": 2, "annotations": []}
    assert tool.draw_annotations(record, metadata).shape[:2] == (40, 24)
    assert tool.draw_annotations(record, metadata, False).shape[:2] == (24, 40)


@pytest.fixture(params=["filter_empty=True", "unset"])
def mixed_dataset_config(tmp_path, monkeypatch, request):
    """A training set of 3 images: one annotated, one without annotations (left out by
    filter_empty), one corrupt file. The config sets filter_empty=True or, as the training
    configs do, leaves it to get_detection_dataset_dicts's default (True)."""
    monkeypatch.setenv("DETR_EXT_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "images"
    root.mkdir()
    for name in ("good.png", "empty.png"):
        Image.fromarray(np.full((30, 40, 3), 90, dtype=np.uint8)).save(root / name)
    (root / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    images = [
        {"id": index + 1, "file_name": name, "width": 40, "height": 30}
        for index, name in enumerate(("good.png", "empty.png", "corrupt.png"))
    ]
    annotations = [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [5, 5, 10, 10], "area": 100,
         "iscrowd": 0},
        {"id": 2, "image_id": 3, "category_id": 1, "bbox": [5, 5, 10, 10], "area": 100,
         "iscrowd": 0},
    ]  # fmt: skip
    data = {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "a"}]}
    (tmp_path / "train.json").write_text(json.dumps(data))
    config = tmp_path / "mixed.py"
    name = f"vis_mixed_{tmp_path.name}"  # one registration per test
    filter_empty = ", filter_empty=True" if request.param == "filter_empty=True" else ""
    config.write_text(
        "from detectron2.config import LazyCall as L\n"
        "from detectron2.data import get_detection_dataset_dicts\n"
        "from detr_ext.data import DetrDatasetMapper\n"
        "from detr_ext.data.datasets import register_coco_format_dataset\n"
        f"register_coco_format_dataset({name!r}, {str(tmp_path / 'train.json')!r}, "
        f"{str(root)!r})\n"
        "dataloader = dict(train=dict(\n"
        f"    dataset=L(get_detection_dataset_dicts)(names={name!r}{filter_empty}),\n"
        "    mapper=L(DetrDatasetMapper)(augmentation=[], is_train=True)))\n"
    )
    return config


@pytest.mark.parametrize("source, drawn, note", [
    ("annotation", ["1.png", "2.png"], "drawing all 3 images; 1 have no annotation"),
    ("dataloader", ["1.png"], "filter_empty left out 1 image(s) without annotations"),
])  # fmt: skip
def test_images_left_out_or_unreadable_are_said_not_silently_dropped(
    mixed_dataset_config, tmp_path, capsys, source, drawn, note
):
    """The image without annotations was never drawn, not even with --source annotation, and
    nothing said so; the corrupt image stopped the run with a traceback, the images after it
    never drawn. A config that leaves filter_empty unset (the training configs) was taken as
    filter_empty=False: --source annotation again skipped the image without a note and
    --source dataloader did not say it was left out."""
    tool = load_script("tools/visualize_data.py")
    out = tmp_path / "vis"
    argv = ["--config-file", str(mixed_dataset_config), "--source", source]
    with pytest.raises(tool.SkippedImages) as info:
        tool.main([*argv, "--output-dir", str(out)])
    assert sorted(path.name for path in info.value.written) == drawn
    assert sorted(path.name for path in out.iterdir()) == drawn
    captured = capsys.readouterr()
    assert note in captured.out
    assert "skipped 1 image(s)" in captured.err and "corrupt.png" in captured.err


def test_the_test_mapper_keeping_no_annotations_is_said(tiny_config, tmp_path, capsys):
    tool = load_script("tools/visualize_data.py")
    tool.main(
        ["--config-file", str(tiny_config), "--source", "dataloader", "--split", "test"]
        + ["--output-dir", str(tmp_path / "vis"), "--num-images", "1"]
    )
    assert "the test mapper keeps no annotations" in capsys.readouterr().out
