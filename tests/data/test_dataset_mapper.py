"""DetrDatasetMapper: boxes follow the image through flip / resize / crop, crowd and cropped-out
annotations are dropped, test mode, channel order and argument validation."""

import copy
import random

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from detectron2.data import transforms as T
from detectron2.structures import BoxMode
from PIL import Image

from detr_ext.data import DetrDatasetMapper

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools.*")

HEIGHT, WIDTH = 120, 160


def _write_image(path, rectangles, color=(255, 255, 255)):
    """A black RGB image with solid rectangles given as XYXY pixel ranges [x0, x1) x [y0, y1)."""
    pixels = np.zeros((HEIGHT, WIDTH, 3), dtype=np.uint8)
    for x0, y0, x1, y1 in rectangles:
        pixels[y0:y1, x0:x1] = color
    Image.fromarray(pixels).save(path)  # PNG: lossless
    return str(path)


def _dataset_dict(path, rectangles, **annotation_fields):
    annotations = [
        {
            "bbox": [x0, y0, x1 - x0, y1 - y0],
            "bbox_mode": BoxMode.XYWH_ABS,
            "category_id": index + 1,
            "iscrowd": 0,
            **annotation_fields,
        }
        for index, (x0, y0, x1, y1) in enumerate(rectangles)
    ]
    return {
        "file_name": path,
        "height": HEIGHT,
        "width": WIDTH,
        "image_id": 1,
        "annotations": annotations,
    }


def _pixel_box(image, channel=0):
    """Tight XYXY box of the bright pixels of a [C, H, W] uint8 image."""
    ys, xs = torch.nonzero(image[channel] > 127, as_tuple=True)
    return torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32)


@pytest.mark.parametrize(
    "augmentation",
    [
        [T.RandomFlip(prob=1.0, horizontal=True)],
        [T.RandomFlip(prob=1.0, horizontal=False, vertical=True)],
        [T.Resize((200, 300))],
        [T.ResizeShortestEdge(short_edge_length=90, max_size=1000)],
        [T.CropTransform(30, 20, 100, 80)],
        [
            T.RandomFlip(prob=1.0),
            T.Resize((150, 210)),
            T.CropTransform(10, 15, 150, 120),
            T.ResizeShortestEdge(short_edge_length=100, max_size=1000),
        ],
    ],
    ids=["hflip", "vflip", "resize", "resize-shortest", "crop", "flip-resize-crop-resize"],
)
def test_box_follows_the_image(tmp_path, augmentation):
    rectangle = (40, 30, 100, 70)
    dataset_dict = _dataset_dict(_write_image(tmp_path / "a.png", [rectangle]), [rectangle])
    mapped = DetrDatasetMapper(augmentation, None, is_train=True)(dataset_dict)

    image, instances = mapped["image"], mapped["instances"]
    assert image.dtype == torch.uint8 and image.shape[0] == 3
    assert instances.image_size == tuple(image.shape[1:])
    assert (mapped["height"], mapped["width"]) == (HEIGHT, WIDTH)
    assert len(instances) == 1 and instances.gt_classes.tolist() == [1]
    torch.testing.assert_close(instances.gt_boxes.tensor[0], _pixel_box(image), atol=1.5, rtol=0)


def test_box_follows_the_image_through_the_random_crop_recipe(tmp_path):
    rectangle = (60, 40, 100, 80)
    dataset_dict = _dataset_dict(_write_image(tmp_path / "a.png", [rectangle]), [rectangle])
    mapper = DetrDatasetMapper(
        augmentation=[T.RandomFlip()],
        augmentation_with_crop=[
            T.RandomFlip(),
            T.ResizeShortestEdge((100, 120, 140), sample_style="choice"),
            T.RandomCrop("absolute_range", (80, 120)),
            T.ResizeShortestEdge((96, 128), max_size=256, sample_style="choice"),
        ],
        crop_probability=1.0,
    )
    random.seed(0)
    np.random.seed(0)
    checked = 0
    for _ in range(12):
        mapped = mapper(dataset_dict)
        image, instances = mapped["image"], mapped["instances"]
        visible = (image[0] > 127).sum() >= 4  # a sliver may vanish when resized down
        if len(instances) and visible:
            torch.testing.assert_close(
                instances.gt_boxes.tensor[0], _pixel_box(image), atol=2.0, rtol=0
            )
            checked += 1
        elif len(instances) == 0:
            assert (image[0] > 127).sum() == 0, "a visible object lost its box"
    assert checked >= 6


def test_crowd_annotations_are_removed(tmp_path):
    rectangles = [(10, 10, 50, 50), (80, 40, 140, 100)]
    dataset_dict = _dataset_dict(_write_image(tmp_path / "a.png", rectangles), rectangles)
    dataset_dict["annotations"][0]["iscrowd"] = 1
    original = copy.deepcopy(dataset_dict)
    mapped = DetrDatasetMapper([T.NoOpTransform()], None)(dataset_dict)
    assert mapped["instances"].gt_classes.tolist() == [2]
    assert "annotations" not in mapped
    assert dataset_dict == original, "the input dataset dict must not be modified"


def test_annotation_outside_the_crop_is_filtered(tmp_path):
    rectangles = [(10, 10, 50, 50), (100, 60, 150, 110)]
    dataset_dict = _dataset_dict(_write_image(tmp_path / "a.png", rectangles), rectangles)
    mapper = DetrDatasetMapper(
        [T.NoOpTransform()], [T.CropTransform(0, 0, 70, 70)], crop_probability=1.0
    )
    mapped = mapper(dataset_dict)
    assert tuple(mapped["image"].shape[1:]) == (70, 70)
    assert mapped["instances"].gt_classes.tolist() == [1]
    torch.testing.assert_close(
        mapped["instances"].gt_boxes.tensor[0], torch.tensor([10.0, 10.0, 50.0, 50.0])
    )


def _crop_share(tmp_path, draws, **mapper_kwargs):
    """Share of ``draws`` seeded training images that went through the crop pipeline (a crop
    to width 120; the other pipeline keeps the full width)."""
    rectangle = (40, 30, 100, 70)
    dataset_dict = _dataset_dict(_write_image(tmp_path / "a.png", [rectangle]), [rectangle])
    mapper = DetrDatasetMapper(
        [T.NoOpTransform()], [T.CropTransform(0, 0, 120, 100)], **mapper_kwargs
    )
    random.seed(0)
    widths = [mapper(dataset_dict)["image"].shape[2] for _ in range(draws)]
    assert set(widths) <= {WIDTH, 120}
    return widths.count(120) / draws


def test_both_pipelines_are_used_at_probability_one_half(tmp_path):
    """The default crop_probability is 0.5: over 400 seeded images about half are cropped
    (binomial standard deviation 0.025, so +-0.1 is 4 of them), not merely both pipelines
    seen once (a fixed 0.9 passed that)."""
    assert _crop_share(tmp_path, 400) == pytest.approx(0.5, abs=0.1)


@pytest.mark.parametrize("probability, tolerance", [(0.0, 0.0), (0.2, 0.08), (1.0, 0.0)])
def test_crop_share_follows_crop_probability(tmp_path, probability, tolerance):
    """The crop pipeline is drawn with probability crop_probability: never at 0, always at 1,
    and about a fifth of the images at 0.2 (standard deviation 0.02 over 400 draws)."""
    share = _crop_share(tmp_path, 400, crop_probability=probability)
    assert share == pytest.approx(probability, abs=tolerance)


def test_test_mode_drops_annotations_and_resizes(tmp_path):
    rectangle = (40, 30, 100, 70)
    dataset_dict = _dataset_dict(_write_image(tmp_path / "a.png", [rectangle]), [rectangle])
    mapper = DetrDatasetMapper(
        [T.ResizeShortestEdge(short_edge_length=240, max_size=1000)],
        [T.CropTransform(0, 0, 10, 10)],
        is_train=False,
    )
    mapped = mapper(dataset_dict)
    assert "instances" not in mapped and "annotations" not in mapped
    assert tuple(mapped["image"].shape) == (3, 240, 320)
    assert (mapped["height"], mapped["width"]) == (HEIGHT, WIDTH)


def test_bgr_format_flips_channels(tmp_path):
    rectangle = (40, 30, 100, 70)
    path = _write_image(tmp_path / "a.png", [rectangle], color=(250, 120, 10))
    dataset_dict = _dataset_dict(path, [rectangle])
    rgb = DetrDatasetMapper([T.NoOpTransform()], None, img_format="RGB")(dataset_dict)["image"]
    bgr = DetrDatasetMapper([T.NoOpTransform()], None, img_format="BGR")(dataset_dict)["image"]
    assert rgb[:, 40, 50].tolist() == [250, 120, 10]
    assert torch.equal(bgr, rgb.flip(0))


def test_mask_on_keeps_masks_through_a_crop(tmp_path):
    rectangle = (40, 30, 100, 70)
    mask = np.zeros((HEIGHT, WIDTH), dtype=np.uint8, order="F")
    mask[30:70, 40:100] = 1
    rle = mask_util.encode(mask)
    dataset_dict = _dataset_dict(
        _write_image(tmp_path / "a.png", [rectangle]), [rectangle], segmentation=rle
    )
    crop = [T.CropTransform(50, 0, 100, 100)]
    with_masks = DetrDatasetMapper(crop, None, mask_on=True)(dataset_dict)["instances"]
    assert tuple(with_masks.gt_masks.tensor.shape) == (1, 100, 100)
    assert with_masks.gt_masks.tensor.sum() == 50 * 40
    without = DetrDatasetMapper(crop, None, mask_on=False)(dataset_dict)["instances"]
    assert not without.has("gt_masks")


def test_invalid_arguments_name_expected_and_got():
    with pytest.raises(ValueError, match="img_format must be one of .* got 'YUV'"):
        DetrDatasetMapper([T.NoOpTransform()], None, img_format="YUV")
    with pytest.raises(TypeError, match="augmentation must be a list .* got NoOpTransform"):
        DetrDatasetMapper(T.NoOpTransform(), None)
    with pytest.raises(TypeError, match=r"augmentation_with_crop\[1\] .* got str"):
        DetrDatasetMapper([T.NoOpTransform()], [T.RandomFlip(), "crop"])
    with pytest.raises(ValueError, match="crop_probability"):
        DetrDatasetMapper([T.NoOpTransform()], None, crop_probability=1.5)


# Found by `make mutate` (mutmut survivors).
def test_annotation_without_iscrowd_is_kept(tmp_path):
    """Exports without the optional ``iscrowd`` field: every object is a training target."""
    rectangles = [(10, 10, 50, 50), (80, 40, 140, 100)]
    dataset_dict = _dataset_dict(_write_image(tmp_path / "a.png", rectangles), rectangles)
    for annotation in dataset_dict["annotations"]:
        del annotation["iscrowd"]
    mapped = DetrDatasetMapper([T.NoOpTransform()], None)(dataset_dict)
    assert mapped["instances"].gt_classes.tolist() == [1, 2]


def test_size_is_taken_from_the_image_and_unused_fields_are_dropped(tmp_path):
    """Without ``height`` / ``width`` the mapper records the image's (inference resizes its
    detections to them); keypoints and a semantic-segmentation file are not passed on."""
    rectangle = (40, 30, 100, 70)
    dataset_dict = _dataset_dict(
        _write_image(tmp_path / "a.png", [rectangle]), [rectangle], keypoints=[50, 40, 2]
    )
    del dataset_dict["height"], dataset_dict["width"]
    dataset_dict["sem_seg_file_name"] = str(tmp_path / "missing.png")
    mapped = DetrDatasetMapper([T.NoOpTransform()], None)(dataset_dict)
    assert (mapped["height"], mapped["width"]) == (HEIGHT, WIDTH)  # 120 x 160, not square
    assert "sem_seg_file_name" not in mapped
    assert not mapped["instances"].has("gt_keypoints")
    assert mapped["instances"].gt_classes.tolist() == [1]


def test_mask_on_keeps_polygons_as_polygons_through_a_flip(tmp_path):
    rectangle = (40, 30, 100, 70)
    polygon = [[40.0, 30.0, 100.0, 30.0, 100.0, 70.0, 40.0, 70.0]]
    dataset_dict = _dataset_dict(
        _write_image(tmp_path / "a.png", [rectangle]), [rectangle], segmentation=polygon
    )
    flip = [T.RandomFlip(prob=1.0, horizontal=True)]
    instances = DetrDatasetMapper(flip, None, mask_on=True)(dataset_dict)["instances"]
    assert type(instances.gt_masks).__name__ == "PolygonMasks"
    [[flipped]] = instances.gt_masks.polygons
    assert sorted(set(flipped[0::2].tolist())) == [WIDTH - 100.0, WIDTH - 40.0]
    assert instances.gt_masks.area().tolist() == [60 * 40]


@pytest.mark.parametrize("number", [int, float], ids=["int-coordinates", "float-coordinates"])
def test_resized_coordinates_are_exact_for_integer_json_values(tmp_path, number):
    """Labeling tools (and the bundled shapes data) write integer boxes and polygons; a resize
    by 0.8333 must scale them exactly, not truncate them (detectron2 scales arrays in place,
    which floors an integer array: [11, 13, 62, 50] became [9, 10, 51, 41])."""
    x0, y0, x1, y1 = 11, 13, 62, 50
    polygon = [x0, y0, x1, y0, x1, y1, x0, y1]
    dataset_dict = _dataset_dict(
        _write_image(tmp_path / "a.png", [(x0, y0, x1, y1)]),
        [(x0, y0, x1, y1)],
        segmentation=[[number(value) for value in polygon]],
    )
    annotation = dataset_dict["annotations"][0]
    annotation["bbox"] = [number(value) for value in annotation["bbox"]]
    resize = [T.ResizeShortestEdge(short_edge_length=100, max_size=1000)]  # 120 x 160 -> 100 x 133
    mapped = DetrDatasetMapper(resize, None, mask_on=True, mask_format="polygon")(dataset_dict)

    scale_x, scale_y = 133 / WIDTH, 100 / HEIGHT
    expected = torch.tensor([x0 * scale_x, y0 * scale_y, x1 * scale_x, y1 * scale_y])
    torch.testing.assert_close(mapped["instances"].gt_boxes.tensor[0], expected, rtol=0, atol=1e-4)
    [[resized]] = mapped["instances"].gt_masks.polygons
    expected_polygon = [
        value * (scale_x if index % 2 == 0 else scale_y) for index, value in enumerate(polygon)
    ]
    np.testing.assert_allclose(resized, expected_polygon, rtol=0, atol=1e-4)
    assert dataset_dict["annotations"][0]["bbox"][0] == number(x0)  # the input is not modified


def test_skip_unreadable_images_lets_the_loader_take_another_image(tmp_path, caplog):
    """One truncated file among four: by default the first batch that meets it fails naming
    it; with skip_unreadable_images the loader (detectron2's MapDataset) takes another image in
    its place, with a warning, and training never sees the broken one."""
    import logging

    from detectron2.data import build_detection_train_loader

    from detr_ext.data import ImageReadError

    dicts = []
    for index in range(4):
        path = _write_image(tmp_path / f"{index}.png", [(10, 10, 50, 40)])
        dicts.append({**_dataset_dict(path, [(10, 10, 50, 40)]), "image_id": index})
    broken = tmp_path / "2.png"
    broken.write_bytes(broken.read_bytes()[:-40])  # cut short: the last image data is lost

    def batches(mapper, count):
        loader = build_detection_train_loader(
            dicts, mapper=mapper, total_batch_size=2, aspect_ratio_grouping=False, num_workers=0
        )
        stream = iter(loader)
        return [item["image_id"] for _ in range(count) for item in next(stream)]

    with pytest.raises(ImageReadError, match=r"2\.png.*image_id=2"):
        batches(DetrDatasetMapper([T.NoOpTransform()]), 4)  # 8 draws from 4 images
    mapper = DetrDatasetMapper([T.NoOpTransform()], skip_unreadable_images=True)
    with caplog.at_level(logging.WARNING, logger="detr_ext.data.dataset_mapper"):
        seen = batches(mapper, 4)
    assert len(seen) == 8 and 2 not in seen and {0, 1, 3} <= set(seen)
    assert "skipped an unreadable image" in caplog.text and "2.png" in caplog.text
    assert mapper.skipped_images >= 1

    with pytest.raises(ValueError, match="skip_unreadable_images is for training"):
        DetrDatasetMapper([T.NoOpTransform()], is_train=False, skip_unreadable_images=True)
