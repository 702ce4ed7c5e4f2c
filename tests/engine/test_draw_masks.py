"""detr_ext.engine.predictor with masks: draw_predictions colours the pixels of instance masks
(and only those of kept detections) and panoptic segments with unified contiguous ids;
instances_to_dicts writes masks as COCO RLE that decodes back; Predictor.predict_outputs hands
over a panoptic model's whole output on the CPU."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from detectron2.data import Metadata
from detectron2.data import transforms as T
from detectron2.structures import Boxes, Instances
from pycocotools import mask as mask_utils

from detr_ext.engine.predictor import (
    Predictor,
    draw_predictions,
    instances_to_dicts,
    mask_to_rle,
    panoptic_to_dicts,
)

HEIGHT, WIDTH = 96, 128
# Grey 100 is none of the Visualizer's random colours, so any colour blended in changes it.
GREY = 100


def grey_image(height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    return np.full((height, width, 3), GREY, dtype=np.uint8)


def changed(drawn: np.ndarray, reference: np.ndarray, region: np.ndarray) -> float:
    """The fraction of ``region``'s pixels whose colour differs between the two images."""
    return float((drawn != reference).any(axis=-1)[region].mean())


def rectangle(
    rows: tuple[int, int], cols: tuple[int, int], size: tuple[int, int] = (HEIGHT, WIDTH)
) -> np.ndarray:
    mask = np.zeros(size, dtype=bool)
    mask[rows[0] : rows[1], cols[0] : cols[1]] = True
    return mask


def detections(with_masks: bool) -> Instances:
    """A kept detection (score 0.9) whose box is [8, 8, 120, 88] and whose mask is the box's
    left part only, and a dropped one (score 0.2) with a mask in the bottom right corner."""
    instances = Instances((HEIGHT, WIDTH))
    instances.pred_boxes = Boxes(torch.tensor([[8.0, 8.0, 120.0, 88.0], [80.0, 90.0, 128.0, 96.0]]))
    instances.scores = torch.tensor([0.9, 0.2])
    instances.pred_classes = torch.tensor([1, 0])
    if with_masks:
        masks = np.stack([rectangle((16, 80), (16, 60)), rectangle((90, 96), (80, 128))])
        instances.pred_masks = torch.from_numpy(masks)
    return instances


def test_instance_masks_colour_their_pixels_only():
    image = grey_image()
    metadata = Metadata(name="two_classes", thing_classes=["circle", "square"])
    np.random.seed(0)  # the Visualizer picks instance colours with np.random
    with_masks = draw_predictions(image, detections(True), metadata, threshold=0.5)
    np.random.seed(0)
    boxes_only = draw_predictions(image, detections(False), metadata, threshold=0.5)
    assert with_masks.shape == image.shape and with_masks.dtype == np.uint8

    # Inside the mask (its outline left out) the mask's colour is blended in.
    assert changed(with_masks, boxes_only, rectangle((20, 76), (20, 56))) > 0.95
    # In the box but right of the mask, and where the dropped detection's mask is: untouched.
    assert changed(with_masks, boxes_only, rectangle((24, 76), (72, 112))) == 0.0
    assert changed(with_masks, image, rectangle((92, 96), (82, 128))) == 0.0


def unified_metadata() -> Metadata:
    """detectron2's unified panoptic metadata: contiguous a=0, sky=1 (stuff), b=2; thing_classes
    lists the things only, so thing b's contiguous id 2 is past its end."""
    return Metadata(
        name="tiny_unified_panoptic",
        thing_classes=["a", "b"],
        stuff_classes=["a", "sky", "b"],
        stuff_colors=[[220, 20, 60], [70, 130, 180], [0, 0, 142]],
        thing_dataset_id_to_contiguous_id={4: 0, 9: 2},
        stuff_dataset_id_to_contiguous_id={4: 0, 6: 1, 9: 2},
    )


# Large enough for the Visualizer's labels (10 px text at least) to stay inside the segments.
PANOPTIC_SIZE = (128, 128)


def panoptic_output() -> tuple[torch.Tensor, list[dict]]:
    """``[128, 128]`` segment ids: thing a (id 3) top left, thing b (id 300) top right, sky
    (id 7) rows 56-95; rows 96-127 are void (0)."""
    segment_ids = torch.zeros(PANOPTIC_SIZE, dtype=torch.int32)
    segment_ids[:56, :64] = 3
    segment_ids[:56, 64:] = 300
    segment_ids[56:96] = 7
    segments_info = [
        {"id": 3, "isthing": True, "category_id": 0},
        {"id": 300, "isthing": True, "category_id": 2},
        {"id": 7, "isthing": False, "category_id": 1},
    ]
    return segment_ids, segments_info


def test_panoptic_segments_are_coloured_and_void_is_not():
    image = grey_image(*PANOPTIC_SIZE)
    panoptic_seg = panoptic_output()
    drawn = draw_predictions(image, detections(True), unified_metadata(), panoptic_seg=panoptic_seg)
    assert drawn.shape == image.shape and drawn.dtype == np.uint8
    segment_ids = panoptic_seg[0].numpy()
    inner = np.zeros_like(segment_ids, dtype=bool)
    inner[3:-3, 3:-3] = True  # away from the outlines drawn on segment borders
    for segment_id in (3, 300, 7):
        region = (segment_ids == segment_id) & inner
        region[:, 61:67] = False
        region[53:59] = False
        assert changed(drawn, image, region) > 0.9, segment_id
    # Void is not drawn; panoptic drawing replaces the instances (none of their boxes here).
    assert changed(drawn, image, rectangle((99, 128), (0, 128), PANOPTIC_SIZE)) == 0.0
    # The segments_info given is left as it was (the Visualizer adds "area" to its dicts).
    assert panoptic_seg[1] == panoptic_output()[1]


def test_panoptic_drawing_without_class_names_and_of_a_wrong_size():
    image = grey_image(*PANOPTIC_SIZE)
    drawn = draw_predictions(image, detections(False), None, panoptic_seg=panoptic_output())
    sky = rectangle((59, 93), (3, 125), PANOPTIC_SIZE)
    assert changed(drawn, image, sky) > 0.9  # named "1"
    with pytest.raises(ValueError, match=r"expected panoptic segment ids of the image's size"):
        draw_predictions(image[:10], detections(False), panoptic_seg=panoptic_output())


def test_instances_to_dicts_writes_masks_as_rle_that_decodes_back():
    rng = np.random.default_rng(0)
    masks = rng.random((3, 13, 17)) > 0.5
    instances = Instances((13, 17))
    instances.pred_boxes = Boxes(torch.tensor([[0.0, 0.0, 5.0, 5.0]] * 3))
    instances.scores = torch.tensor([0.3, 0.9, 0.6])
    instances.pred_classes = torch.tensor([0, 1, 0])
    instances.pred_masks = torch.from_numpy(masks)

    records = json.loads(json.dumps(instances_to_dicts(instances)))  # json-ready
    assert [record["score"] for record in records] == [0.9, 0.6, 0.3]
    for record, index in zip(records, (1, 2, 0)):  # best first: each keeps its own mask
        rle = record["segmentation"]
        assert rle["size"] == [13, 17] and isinstance(rle["counts"], str)
        decoded = mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()})
        np.testing.assert_array_equal(decoded.astype(bool), masks[index])
    without_masks = Instances((13, 17), **{k: v for k, v in instances.get_fields().items()
                                           if k != "pred_masks"})  # fmt: skip
    assert all("segmentation" not in record for record in instances_to_dicts(without_masks))
    with pytest.raises(ValueError, match=r"expected a \[H, W\] mask, got shape \(3, 13, 17\)"):
        mask_to_rle(masks)


class _FixedPanopticModel(torch.nn.Module):
    """Stands in for a panoptic detector: returns fixed outputs in detectron2's format."""

    def forward(self, batched_inputs: list[dict]) -> list[dict]:
        return [{"instances": detections(True), "panoptic_seg": panoptic_output()}]


def test_predict_outputs_returns_the_panoptic_output_on_the_cpu():
    predictor = Predictor.__new__(Predictor)  # the model stand-in needs no config or weights
    predictor.model, predictor.device = _FixedPanopticModel(), torch.device("cpu")
    predictor.augmentation = T.AugmentationList([])
    image = grey_image()

    outputs = predictor.predict_outputs(image)
    assert set(outputs) == {"instances", "panoptic_seg"}
    segment_ids, segments_info = outputs["panoptic_seg"]
    assert torch.equal(segment_ids, panoptic_output()[0]) and segment_ids.device.type == "cpu"
    assert segments_info == panoptic_output()[1]
    assert outputs["instances"].pred_masks.shape == (2, HEIGHT, WIDTH)
    instances, phrases = predictor.predict(image)
    assert len(instances) == 2 and phrases is None


def test_panoptic_to_dicts_lists_things_and_stuff_with_dataset_ids_and_rle():
    segment_ids, segments_info = panoptic_output()
    segments_info[0]["score"] = 0.91234
    segments = json.loads(json.dumps(panoptic_to_dicts((segment_ids, segments_info),
                                                       unified_metadata())))  # fmt: skip
    summary = [
        (s["id"], s["isthing"], s["category_id"], s["category_name"], s["score"], s["area"])
        for s in segments
    ]
    assert summary == [
        (3, True, 4, "a", 0.9123, 56 * 64),
        (7, False, 6, "sky", None, 40 * 128),
        (300, True, 9, "b", None, 56 * 64),
    ]
    for segment in segments:
        rle = segment["segmentation"]
        decoded = mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()})
        np.testing.assert_array_equal(decoded.astype(bool), (segment_ids == segment["id"]).numpy())
    assert (
        segments_info == [dict(panoptic_output()[1][0], score=0.91234)] + panoptic_output()[1][1:]
    )

    plain = panoptic_to_dicts((segment_ids, segments_info))  # no metadata: contiguous ids
    assert [(s["category_id"], s["category_name"]) for s in plain] == [(0, None), (1, None),
                                                                       (2, None)]  # fmt: skip
    with pytest.raises(
        ValueError, match=r"expected segment ids \[H, W\], got shape \(1, 128, 128\)"
    ):
        panoptic_to_dicts((segment_ids[None], segments_info))
    with pytest.raises(ValueError, match="expected segments_info entries with 'id'"):
        panoptic_to_dicts((segment_ids, [{"category_id": 0}]))
