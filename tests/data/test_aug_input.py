"""ClampedAugInput: a resize that would make an image side 0 px makes it 1 px instead, with the
transform (and so the boxes transformed by it) changed to match; the mappers use it, so a thin
image from a labeling tool trains and evaluates instead of crashing inside PIL."""

import numpy as np
import pytest
import torch
from detectron2.data import transforms as T
from detectron2.structures import BoxMode
from PIL import Image

from detr_ext.data import ClampedAugInput, DetrDatasetMapper, clamp_resize_transforms
from detr_ext.data.panoptic_mapper import DetrPanopticDatasetMapper

# dino_shapes' resize: the long side is capped at 288 px, so 3 px of 2000 become 0.43 px -> 0.
THIN_RESIZE = T.ResizeShortestEdge(short_edge_length=192, max_size=288)
HEIGHT, WIDTH = 3, 2000


def test_the_resize_rounds_the_thin_side_to_zero():
    """The condition the clamp exists for (if detectron2 stops rounding to 0, this says so)."""
    assert T.ResizeShortestEdge.get_output_shape(HEIGHT, WIDTH, 192, 288) == (0, 288)


@pytest.mark.parametrize("shape", [(HEIGHT, WIDTH), (WIDTH, HEIGHT)])
def test_a_side_resized_to_zero_becomes_one_pixel(shape):
    height, width = shape
    image = np.full((height, width, 3), 200, dtype=np.uint8)
    boxes = np.array([[0.0, 0.0, width, height]], dtype=np.float32)  # the whole image
    aug_input = ClampedAugInput(image, boxes=boxes)
    transforms = T.AugmentationList([THIN_RESIZE])(aug_input)

    expected = (1, 288) if height < width else (288, 1)
    assert aug_input.image.shape == (*expected, 3)
    assert (aug_input.image == 200).all()
    # The returned transform is the clamped one: boxes transformed later agree with the image.
    np.testing.assert_allclose(aug_input.boxes, [[0, 0, expected[1], expected[0]]], rtol=1e-5)
    np.testing.assert_allclose(transforms.apply_box(boxes), aug_input.boxes)


def test_clamp_walks_nested_transform_lists_and_leaves_other_transforms_alone():
    zero = T.ResizeTransform(3, 2000, 0, 288)
    fine = T.ResizeTransform(100, 100, 50, 50)
    flip = T.HFlipTransform(288)
    nested = T.TransformList([flip, T.TransformList([zero, fine])])
    assert clamp_resize_transforms(nested) == 1
    assert (zero.new_h, zero.new_w) == (1, 288)
    assert (fine.new_h, fine.new_w) == (50, 50)
    assert clamp_resize_transforms(nested) == 0  # already clamped


def _thin_image_file(tmp_path, height, width):
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    pixels[:, 100:400] = 255  # one bright object across the full height
    path = tmp_path / f"thin_{height}x{width}.png"
    Image.fromarray(pixels).save(path)
    return str(path)


def test_dataset_mapper_trains_on_a_thin_image(tmp_path):
    path = _thin_image_file(tmp_path, HEIGHT, WIDTH)
    record = {
        "file_name": path,
        "height": HEIGHT,
        "width": WIDTH,
        "image_id": 7,
        "annotations": [
            {"bbox": [100, 0, 300, 3], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 0}
        ],
    }
    mapper = DetrDatasetMapper([T.RandomFlip(prob=0.0), THIN_RESIZE], is_train=True)
    mapped = mapper(record)

    assert tuple(mapped["image"].shape) == (3, 1, 288)
    boxes = mapped["instances"].gt_boxes.tensor
    scale = 288 / WIDTH
    expected = torch.tensor([[100 * scale, 0.0, 400 * scale, 1.0]])
    torch.testing.assert_close(boxes, expected, rtol=1e-4, atol=1e-4)
    assert mapped["instances"].gt_classes.tolist() == [0]


def test_test_mappers_resize_a_thin_image(tmp_path):
    path = _thin_image_file(tmp_path, WIDTH, HEIGHT)  # 2000 x 3: the width becomes 0.43 px
    record = {"file_name": path, "height": WIDTH, "width": HEIGHT, "image_id": 8}
    for mapper_class in (DetrDatasetMapper, DetrPanopticDatasetMapper):
        mapped = mapper_class([THIN_RESIZE], is_train=False)(dict(record))
        assert tuple(mapped["image"].shape) == (3, 288, 1), mapper_class.__name__
        assert (mapped["height"], mapped["width"]) == (WIDTH, HEIGHT)
