"""Masks in the dataset mappers: instance masks (polygons, RLE) and panoptic segments follow
the image through flips, resizing and crops; emptied ones are dropped; mask errors name the
image and the annotation."""

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from detectron2.data import transforms as T
from detectron2.structures import BitMasks, BoxMode, PolygonMasks
from PIL import Image

from detr_ext.data import DetrDatasetMapper, DetrPanopticDatasetMapper
from detr_ext.data.panoptic_mapper import rgb2id

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools.*")

HEIGHT, WIDTH = 120, 160
# An L (not symmetric under any flip) and a rectangle, with integer corners in COCO's pixel
# coordinates, so that their pixels are exact: [x0, x1) x [y0, y1).
L_POLYGON = [30, 20, 90, 20, 90, 45, 55, 45, 55, 90, 30, 90]
RECT_POLYGON = [110, 60, 150, 60, 150, 110, 110, 110]
RED, GREEN = (200, 30, 30), (30, 200, 30)


def _l_mask():
    mask = np.zeros((HEIGHT, WIDTH), dtype=bool)
    mask[20:45, 30:90] = True
    mask[45:90, 30:55] = True
    return mask


def _rect_mask():
    mask = np.zeros((HEIGHT, WIDTH), dtype=bool)
    mask[60:110, 110:150] = True
    return mask


def _box(mask):
    ys, xs = np.nonzero(mask)
    return [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]


def _write_image(path):
    pixels = np.zeros((HEIGHT, WIDTH, 3), dtype=np.uint8)
    pixels[_l_mask()] = RED
    pixels[_rect_mask()] = GREEN
    Image.fromarray(pixels).save(path)
    return str(path)


def _instance_dict(tmp_path, segmentation_kind):
    annotations = []
    for category_id, (polygon, mask) in enumerate(
        [(L_POLYGON, _l_mask()), (RECT_POLYGON, _rect_mask())]
    ):
        if segmentation_kind == "polygon":
            segmentation = [list(map(float, polygon))]
        elif segmentation_kind == "rle-uncompressed":
            segmentation = _uncompressed_rle(mask)
        elif segmentation_kind == "array":
            segmentation = mask.astype(np.uint8)
        else:
            segmentation = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
        x0, y0, x1, y1 = _box(mask)
        annotations.append(
            {
                "bbox": [x0, y0, x1 - x0, y1 - y0],
                "bbox_mode": BoxMode.XYWH_ABS,
                "category_id": category_id,
                "iscrowd": 0,
                "segmentation": segmentation,
            }
        )
    return {
        "file_name": _write_image(tmp_path / "image.png"),
        "height": HEIGHT,
        "width": WIDTH,
        "image_id": 7,
        "annotations": annotations,
    }


def _uncompressed_rle(mask):
    """COCO's uncompressed RLE (``counts`` a list of run lengths, column-major, starting with
    a run of zeros), as labeling tools export it."""
    flat = mask.flatten(order="F").astype(np.uint8)
    changes = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat[0]:
        counts = [0, *counts]
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": counts}


def _dense(gt_masks, height, width):
    if isinstance(gt_masks, PolygonMasks):
        gt_masks = BitMasks.from_polygon_masks(gt_masks, height, width)
    return gt_masks.tensor.numpy().astype(bool)


def _hflip(mask):
    return mask[:, ::-1]


def _vflip(mask):
    return mask[::-1]


def _double(mask):
    return mask.repeat(2, axis=0).repeat(2, axis=1)


# (augmentations, the same geometric change applied to a mask with numpy, exact image check)
CASES = {
    "hflip": ([T.RandomFlip(prob=1.0, horizontal=True)], _hflip, True),
    "vflip": ([T.RandomFlip(prob=1.0, horizontal=False, vertical=True)], _vflip, True),
    # 120 x 160 -> 240 x 320: an exact doubling, so the expected mask is known to the pixel.
    "resize": ([T.ResizeShortestEdge(short_edge_length=240, max_size=1000)], _double, False),
    "crop": ([T.CropTransform(20, 10, 100, 90)], lambda m: m[10:100, 20:120], True),
    "flip-resize-crop": (
        [
            T.RandomFlip(prob=1.0, horizontal=True),
            T.ResizeShortestEdge(short_edge_length=240, max_size=1000),
            T.CropTransform(30, 40, 200, 150),
        ],
        lambda m: _double(m[:, ::-1])[40:190, 30:230],
        False,
    ),
}


def _colour_mask(image, colour):
    """Pixels of a [3, H, W] uint8 image that have ``colour`` (no interpolation happened)."""
    return np.all(image.permute(1, 2, 0).numpy() == np.array(colour, dtype=np.uint8), axis=-1)


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
@pytest.mark.parametrize(
    "segmentation_kind, mask_format, mask_type",
    [
        ("polygon", "auto", PolygonMasks),
        ("polygon", "polygon", PolygonMasks),
        ("polygon", "bitmask", BitMasks),
        ("rle", "auto", BitMasks),
        # Formats the mapper documents but detectron2's transforms do not take: an uncompressed
        # RLE failed with "TypeError: Expected bytes, got list", an array with "Cannot transform
        # segmentation of type ndarray" (hand-built dataset dicts; load_coco_json compresses).
        ("rle-uncompressed", "auto", BitMasks),
        ("array", "bitmask", BitMasks),
    ],
)
def test_instance_masks_follow_the_image(tmp_path, case, segmentation_kind, mask_format, mask_type):
    augmentation, expected_of, exact_image = CASES[case]
    dataset_dict = _instance_dict(tmp_path, segmentation_kind)
    mapper = DetrDatasetMapper(augmentation, None, mask_on=True, mask_format=mask_format)
    mapped = mapper(dataset_dict)
    image, instances = mapped["image"], mapped["instances"]
    height, width = image.shape[1:]
    assert isinstance(instances.gt_masks, mask_type)
    assert instances.gt_classes.tolist() == [0, 1]
    masks = _dense(instances.gt_masks, height, width)
    for index, original in enumerate([_l_mask(), _rect_mask()]):
        expected = expected_of(original)
        assert masks[index].shape == expected.shape
        assert np.array_equal(masks[index], expected), f"instance {index} in case {case}"
        assert instances.gt_boxes.tensor[index].tolist() == _box(expected)
    if exact_image:
        assert np.array_equal(masks[0], _colour_mask(image, RED))
        assert np.array_equal(masks[1], _colour_mask(image, GREEN))


@pytest.mark.parametrize(
    "segmentation_kind, mask_format", [("polygon", "auto"), ("polygon", "bitmask"), ("rle", "auto")]
)
def test_an_instance_emptied_by_a_crop_is_dropped(tmp_path, segmentation_kind, mask_format):
    """The crop keeps part of the L's box but none of its pixels, and all of the rectangle."""
    dataset_dict = _instance_dict(tmp_path, segmentation_kind)
    crop = [T.CropTransform(60, 50, 100, 70)]
    mapper = DetrDatasetMapper(crop, None, mask_on=True, mask_format=mask_format)
    instances = mapper(dataset_dict)["instances"]
    assert instances.gt_classes.tolist() == [1]
    masks = _dense(instances.gt_masks, 70, 100)
    assert np.array_equal(masks[0], _rect_mask()[50:120, 60:160])


def test_mask_on_without_segmentation_names_the_image_and_annotation(tmp_path):
    dataset_dict = _instance_dict(tmp_path, "polygon")
    del dataset_dict["annotations"][1]["segmentation"]
    mapper = DetrDatasetMapper([T.NoOpTransform()], None, mask_on=True)
    with pytest.raises(ValueError, match=r"annotation 1 of image '.*image\.png' \(image_id=7\)"):
        mapper(dataset_dict)
    # Without masks the missing segmentation does not matter.
    instances = DetrDatasetMapper([T.NoOpTransform()], None)(dataset_dict)["instances"]
    assert len(instances) == 2 and not instances.has("gt_masks")


@pytest.mark.parametrize("mask_format", ["auto", "polygon", "bitmask"])
def test_degenerate_polygon_parts_are_left_out_with_a_warning(tmp_path, caplog, mask_format):
    """Labeling tools export stray parts (a point, a line, an empty list) next to the real
    polygon; they cover no pixel, and detectron2 refused the whole image with "Failed to use
    mask_format=='polygon'", naming neither image nor annotation."""
    dataset_dict = _instance_dict(tmp_path, "polygon")
    annotation = dataset_dict["annotations"][1]
    annotation["segmentation"] = [[5.0, 5.0], annotation["segmentation"][0], [], [1, 2, 3, 4]]
    mapper = DetrDatasetMapper([T.NoOpTransform()], None, mask_on=True, mask_format=mask_format)
    with caplog.at_level("WARNING", logger="detr_ext.data.dataset_mapper"):
        instances = mapper(dataset_dict)["instances"]
    masks = _dense(instances.gt_masks, HEIGHT, WIDTH)
    assert masks[1].sum() == _rect_mask().sum()  # the real polygon alone, as before
    assert (
        "left out 3 polygon(s) with fewer than 3 points from annotation 1 of image" in caplog.text
    )


@pytest.mark.parametrize(
    "segmentation, message",
    [
        ([], r"annotation 1 of image .*\(image_id=7\) has no polygon with at least 3 points"),
        ([[10, 10, 20, 10]], r"has no polygon with at least 3 points \(segmentation \[\[10, 10"),
        ([10, 10, 20, 10, 20, 20], r"not a list of polygons; expected \[\[x0, y0, x1, y1"),
        ([[10, 10, 20, 10, 20]], r"a polygon with an odd number of coordinates \(5\)"),
    ],
    ids=["empty", "a-line", "flat-list", "odd"],
)
def test_unusable_polygon_segmentations_name_the_annotation(tmp_path, segmentation, message):
    dataset_dict = _instance_dict(tmp_path, "polygon")
    dataset_dict["annotations"][1]["segmentation"] = segmentation
    mapper = DetrDatasetMapper([T.NoOpTransform()], None, mask_on=True)
    with pytest.raises(ValueError, match=message):
        mapper(dataset_dict)
    # Without masks the segmentation does not matter.
    assert len(DetrDatasetMapper([T.NoOpTransform()], None)(dataset_dict)["instances"]) == 2


@pytest.mark.parametrize(
    "segmentation, message",
    [
        (np.zeros((2, 3, 4), dtype=np.uint8), r"expected a mask array of shape \[H, W\]"),
        ({"size": [HEIGHT], "counts": [1, 2]}, "cannot read its uncompressed RLE"),
        ("not a mask", "expected COCO polygons, an RLE dict"),
    ],
)
def test_unusable_dense_segmentations_name_the_annotation(tmp_path, segmentation, message):
    dataset_dict = _instance_dict(tmp_path, "polygon")
    dataset_dict["annotations"][1]["segmentation"] = segmentation
    mapper = DetrDatasetMapper([], None, mask_on=True, mask_format="bitmask")
    with pytest.raises(ValueError, match=message) as info:
        mapper(dataset_dict)
    assert "annotation 1 of" in str(info.value)


def test_polygon_format_rejects_rle_and_bad_formats_are_refused(tmp_path):
    dataset_dict = _instance_dict(tmp_path, "rle")
    mapper = DetrDatasetMapper([T.NoOpTransform()], None, mask_on=True, mask_format="polygon")
    with pytest.raises(ValueError, match=r"annotation 0 of image .* has a dict segmentation"):
        mapper(dataset_dict)
    with pytest.raises(ValueError, match="mask_format must be one of .* got 'rle'"):
        DetrDatasetMapper([T.NoOpTransform()], None, mask_format="rle")


@pytest.mark.parametrize("mask_format, mask_type", [("auto", PolygonMasks), ("bitmask", BitMasks)])
def test_an_image_without_objects_still_has_masks(tmp_path, mask_format, mask_type):
    dataset_dict = _instance_dict(tmp_path, "polygon")
    dataset_dict["annotations"] = []
    mapper = DetrDatasetMapper([T.NoOpTransform()], None, mask_on=True, mask_format=mask_format)
    instances = mapper(dataset_dict)["instances"]
    assert len(instances) == 0 and isinstance(instances.gt_masks, mask_type)


# ------------------------------------------------------------------------------ panoptic
# Segment ids chosen to use all three PNG channels: id = R + 256 G + 256^2 B.
L_ID, RECT_ID, CROWD_ID, BACKGROUND_ID = 1000, 70000, 5, 7


def _crowd_mask():
    mask = np.zeros((HEIGHT, WIDTH), dtype=bool)
    mask[100:110, 5:20] = True
    return mask


def _panoptic_dict(tmp_path):
    segment_ids = np.full((HEIGHT, WIDTH), BACKGROUND_ID, dtype=np.int64)
    segment_ids[_l_mask()] = L_ID
    segment_ids[_rect_mask()] = RECT_ID
    segment_ids[_crowd_mask()] = CROWD_ID
    rgb = np.stack([(segment_ids >> s) & 255 for s in (0, 8, 16)], axis=-1).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "panoptic.png")
    assert np.array_equal(rgb2id(np.asarray(Image.open(tmp_path / "panoptic.png"))), segment_ids)
    segments_info = [
        {"id": L_ID, "category_id": 0, "iscrowd": 0, "isthing": True},
        {"id": CROWD_ID, "category_id": 1, "iscrowd": 1, "isthing": True},
        {"id": RECT_ID, "category_id": 2, "iscrowd": 0, "isthing": True},
        {"id": BACKGROUND_ID, "category_id": 3, "iscrowd": 0, "isthing": False},
    ]
    return {
        "file_name": _write_image(tmp_path / "image.png"),
        "image_id": 7,
        "pan_seg_file_name": str(tmp_path / "panoptic.png"),
        "segments_info": segments_info,
    }


def _background_mask():
    return ~(_l_mask() | _rect_mask() | _crowd_mask())


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_panoptic_segments_follow_the_image(tmp_path, case):
    augmentation, expected_of, exact_image = CASES[case]
    mapped = DetrPanopticDatasetMapper(augmentation, None)(_panoptic_dict(tmp_path))
    image, instances = mapped["image"], mapped["instances"]
    assert "pan_seg_file_name" not in mapped and "segments_info" not in mapped
    assert instances.gt_classes.tolist() == [0, 2, 3], "the crowd segment must be dropped"
    assert isinstance(instances.gt_masks, BitMasks)
    masks = instances.gt_masks.tensor.numpy()
    for index, original in enumerate([_l_mask(), _rect_mask(), _background_mask()]):
        expected = expected_of(original)
        assert np.array_equal(masks[index], expected), f"segment {index} in case {case}"
        assert instances.gt_boxes.tensor[index].tolist() == _box(expected)
    if exact_image:
        assert np.array_equal(masks[0], _colour_mask(image, RED))


def test_panoptic_segment_emptied_by_a_crop_is_dropped_and_mask_on_false(tmp_path):
    dataset_dict = _panoptic_dict(tmp_path)
    crop = [T.CropTransform(60, 50, 100, 70)]
    instances = DetrPanopticDatasetMapper(crop, None)(dataset_dict)["instances"]
    assert instances.gt_classes.tolist() == [2, 3]
    assert np.array_equal(instances.gt_masks.tensor[0].numpy(), _rect_mask()[50:120, 60:160])
    boxes_only = DetrPanopticDatasetMapper(crop, None, mask_on=False)(dataset_dict)["instances"]
    assert not boxes_only.has("gt_masks")
    assert torch.equal(boxes_only.gt_boxes.tensor, instances.gt_boxes.tensor)


def test_panoptic_with_more_than_255_segments(tmp_path):
    """Label maps that do not fit uint8 go through the transforms as float32, still exact."""
    height, width = 20, 16
    segment_ids = np.arange(1, height * width + 1, dtype=np.int64).reshape(height, width)
    rgb = np.stack([(segment_ids >> s) & 255 for s in (0, 8, 16)], axis=-1).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "panoptic.png")
    Image.fromarray(np.zeros((height, width, 3), dtype=np.uint8)).save(tmp_path / "image.png")
    dataset_dict = {
        "file_name": str(tmp_path / "image.png"),
        "image_id": 1,
        "pan_seg_file_name": str(tmp_path / "panoptic.png"),
        "segments_info": [
            {"id": int(i), "category_id": int(i) % 4, "iscrowd": 0} for i in segment_ids.ravel()
        ],
    }
    flip_double = [T.RandomFlip(prob=1.0), T.ResizeShortestEdge(32, max_size=1000)]
    instances = DetrPanopticDatasetMapper(flip_double, None)(dataset_dict)["instances"]
    assert len(instances) == height * width
    expected_ids = _double(segment_ids[:, ::-1])
    masks = instances.gt_masks.tensor.numpy()
    for k in (0, 17, 255, 256, 319):
        assert np.array_equal(masks[k], expected_ids == segment_ids.ravel()[k])
    assert instances.gt_classes.tolist() == [int(i) % 4 for i in segment_ids.ravel()]


def test_panoptic_mapper_errors_and_test_mode(tmp_path):
    dataset_dict = _panoptic_dict(tmp_path)
    del dataset_dict["pan_seg_file_name"]
    with pytest.raises(ValueError, match=r"image '.*image\.png' \(image_id=7\).*pan_seg_file_name"):
        DetrPanopticDatasetMapper([T.NoOpTransform()], None)(dataset_dict)
    with pytest.raises(ValueError, match="mask_format 'auto' or 'bitmask', got 'polygon'"):
        DetrPanopticDatasetMapper([T.NoOpTransform()], None, mask_format="polygon")

    # At test time the PNG is not needed and nothing but the image is produced.
    mapper = DetrPanopticDatasetMapper(
        [T.ResizeShortestEdge(240, max_size=1000)], None, is_train=False
    )
    mapped = mapper(dataset_dict)
    assert "instances" not in mapped and "segments_info" not in mapped
    assert tuple(mapped["image"].shape) == (3, 240, 320)
    assert (mapped["height"], mapped["width"]) == (HEIGHT, WIDTH)
