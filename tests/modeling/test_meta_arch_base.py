"""DetectorBase: preprocessing, targets, inference helpers and the forward template."""

import pytest
import torch
from detectron2.structures import Boxes, Instances
from torch import nn

from detr_ext.layers.box_ops import box_cxcywh_to_xyxy
from detr_ext.modeling import DetectorBase

MEAN = [10.0, 20.0, 30.0]
STD = [2.0, 4.0, 5.0]


class FixedOutputDetector(DetectorBase):
    """Predicts the same two queries for every image; loss = number of target boxes."""

    def __init__(self, **kwargs):
        super().__init__(
            backbone=nn.Identity(), num_classes=2, pixel_mean=MEAN, pixel_std=STD, **kwargs
        )
        self.criterion = lambda outputs, targets: {
            "loss_count": torch.tensor(float(sum(len(t["labels"]) for t in targets)))
        }

    def forward_outputs(self, images, padding_mask, targets):
        batch_size = images.tensor.shape[0]
        logits = torch.tensor([[4.0, -4.0, -4.0], [-4.0, 3.0, -4.0]]).expand(batch_size, -1, -1)
        boxes = torch.tensor([[0.5, 0.5, 0.5, 0.5], [0.25, 0.25, 0.5, 0.5]])
        return {"pred_logits": logits, "pred_boxes": boxes.expand(batch_size, -1, -1)}

    def inference(self, outputs, image_sizes):
        return self.inference_softmax(outputs["pred_logits"], outputs["pred_boxes"], image_sizes)


def _input(image_height, image_width, boxes=None, classes=None, **extra):
    image = torch.full((3, image_height, image_width), 50, dtype=torch.uint8)
    item = {"image": image, **extra}
    if boxes is not None:
        instances = Instances((image_height, image_width))
        instances.gt_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32))
        instances.gt_classes = torch.tensor(classes)
        item["instances"] = instances
    return item


def test_preprocess_normalizes_and_masks_padding_of_two_sizes():
    model = FixedOutputDetector()
    images, mask = model.preprocess_image([_input(4, 6), _input(5, 3)])
    assert images.tensor.shape == (2, 3, 5, 6)
    assert images.image_sizes == [(4, 6), (5, 3)]
    expected_value = (50 - torch.tensor(MEAN)) / torch.tensor(STD)
    torch.testing.assert_close(images.tensor[0, :, 0, 0], expected_value)
    expected_mask = torch.ones(2, 5, 6, dtype=torch.bool)
    expected_mask[0, :4, :6] = False
    expected_mask[1, :5, :3] = False
    assert mask.dtype == torch.bool
    assert torch.equal(mask, expected_mask)
    assert torch.all(images.tensor[0, :, 4:, :] == 0) and torch.all(images.tensor[1, :, :, 3:] == 0)


def test_size_divisibility_pads_to_multiple():
    model = FixedOutputDetector(size_divisibility=8)
    images, mask = model.preprocess_image([_input(5, 9)])
    assert images.tensor.shape[-2:] == (8, 16)
    assert mask[0, :5, :9].sum() == 0 and mask.sum() == 8 * 16 - 5 * 9


def test_preprocess_rejects_wrong_channels():
    model = FixedOutputDetector()
    with pytest.raises(ValueError, match=r"\[3, H, W\].*got shape \(1, 4, 4\)"):
        model.preprocess_image([{"image": torch.zeros(1, 4, 4)}])


def test_prepare_targets_normalized_cxcywh_by_hand():
    model = FixedOutputDetector()
    item = _input(50, 100, boxes=[[10.0, 5.0, 30.0, 45.0], [0.0, 0.0, 100.0, 50.0]], classes=[1, 0])
    (target,) = model.prepare_targets([item])
    # box 1: cx = 20 / 100, cy = 25 / 50, w = 20 / 100, h = 40 / 50
    expected = torch.tensor([[0.2, 0.5, 0.2, 0.8], [0.5, 0.5, 1.0, 1.0]])
    torch.testing.assert_close(target["boxes"], expected)
    assert target["labels"].dtype == torch.int64 and target["labels"].tolist() == [1, 0]


def test_prepare_targets_needs_instances():
    model = FixedOutputDetector()
    with pytest.raises(ValueError, match="instances"):
        model.prepare_targets([_input(4, 4)])


@pytest.mark.parametrize("label", [2, 3, -1])
def test_prepare_targets_refuses_classes_outside_the_model(label):
    """Class K trained as "no object" in DETR without a word; K + 1 and -1 failed inside the
    matcher, the cross-entropy or the denoising embedding (a device-side assert on a GPU)."""
    model = FixedOutputDetector()  # num_classes=2
    item = _input(50, 100, boxes=[[10.0, 5.0, 30.0, 45.0], [0, 0, 9, 9]], classes=[0, label])
    with pytest.raises(
        ValueError,
        match=rf"batched_inputs\[0\] has gt_classes \[{label}\], expected class indices in "
        r"\[0, 2\) \(model.num_classes=2\)",
    ):
        model.prepare_targets([item])


@pytest.mark.parametrize(
    "box", [[30.0, 30.0, 10.0, 12.0], [10.0, 30.0, 20.0, 12.0], [0.0, 0.0, float("nan"), 4.0]]
)
def test_prepare_targets_refuses_boxes_that_are_not_xyxy(box):
    """An inverted box (COCO XYWH given as XYXY) gave GIoU > 1: finite, hugely negative losses
    (DINO about -117,000) that no non-finite check sees."""
    model = FixedOutputDetector()
    good = _input(50, 100, boxes=[[10.0, 5.0, 30.0, 45.0]], classes=[1])
    bad = _input(50, 100, boxes=[[10.0, 5.0, 30.0, 45.0], box], classes=[1, 0])
    with pytest.raises(
        ValueError, match=r"batched_inputs\[1\] has 1 gt_boxes that are not absolute"
    ):
        model.prepare_targets([good, bad])
    degenerate = _input(50, 100, boxes=[[10.0, 5.0, 10.0, 5.0]], classes=[1])  # zero area: kept
    assert len(model.prepare_targets([degenerate])[0]["boxes"]) == 1
    tensor_boxes = _input(50, 100, boxes=[[10.0, 5.0, 30.0, 45.0]], classes=[1])
    tensor_boxes["instances"].gt_boxes = tensor_boxes["instances"].gt_boxes.tensor
    with pytest.raises(ValueError, match="gt_boxes as detectron2 Boxes"):
        model.prepare_targets([tensor_boxes])


@pytest.mark.parametrize("classes", [[0.0, 1.9], [0.0, float("nan")], [True, False]])
def test_prepare_targets_refuses_classes_that_are_not_integers(classes):
    """A float 1.9 was truncated to class 1; NaN became -2**63 and an IndexError inside the
    matcher (or the denoising embedding)."""
    model = FixedOutputDetector()
    item = _input(50, 100, boxes=[[10.0, 5.0, 30.0, 45.0], [0, 0, 9, 9]], classes=classes)
    with pytest.raises(ValueError, match=r"batched_inputs\[0\]\['instances'\].gt_classes as an "):
        model.prepare_targets([item])


def test_prepare_targets_refuses_instances_of_another_size_than_their_image():
    """Boxes are normalized by instances.image_size: a custom mapper that built Instances from
    the original size after resizing trained on boxes half their size, without a word."""
    model = FixedOutputDetector()
    good = _input(50, 100, boxes=[[10.0, 5.0, 30.0, 45.0]], classes=[1])
    stale = _input(50, 100, boxes=[[10.0, 5.0, 30.0, 45.0]], classes=[1])
    stale["instances"] = Instances((100, 200), **stale["instances"].get_fields())
    with pytest.raises(
        ValueError,
        match=r"batched_inputs\[1\]\['instances'\].image_size is \(100, 200\), but its image "
        r"is \(50, 100\)",
    ):
        model.prepare_targets([good, stale])


def test_more_objects_than_queries_is_said_once(caplog, monkeypatch):
    """One-to-one matching trains at most num_queries objects of an image; dense scenes
    (SKU-110K) lost the rest every step without a word."""
    from detectron2.utils import logger as d2_logger

    monkeypatch.setattr(d2_logger, "_LOG_COUNTER", type(d2_logger._LOG_COUNTER)())
    model = FixedOutputDetector()
    model.num_queries = 2
    boxes = [[0.0, 0.0, 9.0, 9.0]] * 3
    fits = _input(50, 100, boxes=boxes[:2], classes=[0, 1])
    dense = _input(50, 100, boxes=boxes, classes=[0, 1, 1])
    with caplog.at_level("WARNING"):
        model.prepare_targets([fits])
        assert not caplog.records
        model.prepare_targets([fits, dense])
        model.prepare_targets([dense])
    (record,) = caplog.records
    assert "batched_inputs[1] has 3 objects, more than model.num_queries=2" in record.getMessage()
    del model.num_queries  # a detector without queries (DetectorBase itself): nothing to say
    model.prepare_targets([dense])
    assert len(caplog.records) == 1


def test_inference_sigmoid_topk_hand_example():
    model = FixedOutputDetector(select_box_nums_for_evaluation=3)
    # Q = 2 queries, K = 3 classes; ranks: (q1, c2) 3.0 > (q0, c0) 2.0 > (q1, c0) 1.0 > rest.
    logits = torch.tensor([[[2.0, -1.0, -5.0], [1.0, -2.0, 3.0]]])
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.4], [0.25, 0.75, 0.5, 0.5]]])
    (result,) = model.inference_sigmoid_topk(logits, boxes, [(10, 20)])
    assert result.image_size == (10, 20)
    torch.testing.assert_close(result.scores, torch.tensor([3.0, 2.0, 1.0]).sigmoid())
    assert result.pred_classes.tolist() == [2, 0, 0]
    box_q0 = [8.0, 3.0, 12.0, 7.0]  # cx 10, cy 5, w 4, h 4 in a 20 x 10 image
    box_q1 = [0.0, 5.0, 10.0, 10.0]
    torch.testing.assert_close(result.pred_boxes.tensor, torch.tensor([box_q1, box_q0, box_q1]))
    # k is capped at Q * K.
    (capped,) = model.inference_sigmoid_topk(logits, boxes, [(10, 20)], k=100)
    assert len(capped) == 6


def test_inference_sigmoid_topk_ranks_each_image_of_a_batch_on_its_own():
    model = FixedOutputDetector(select_box_nums_for_evaluation=2)
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 4, 3, generator=generator)
    boxes = torch.rand(3, 4, 4, generator=generator) * 0.5 + 0.25
    results = model.inference_sigmoid_topk(logits, boxes, [(10, 20)] * 3)
    for image, result in enumerate(results):
        flat = logits[image].sigmoid().flatten()
        best = flat.argsort(descending=True)[:2]
        torch.testing.assert_close(result.scores, flat[best])
        assert result.pred_classes.tolist() == (best % 3).tolist()
        expected = Boxes(box_cxcywh_to_xyxy(boxes[image, best // 3]))
        expected.scale(scale_x=20, scale_y=10)
        torch.testing.assert_close(result.pred_boxes.tensor, expected.tensor)


@pytest.mark.parametrize(
    "logits, boxes, sizes, message",
    [
        ((2, 3, 3), (2, 3, 5), 2, r"expected logits \[B, Q, C\] and boxes \[B, Q, 4\], got "
         r"\(2, 3, 3\) and \(2, 3, 5\)"),
        ((2, 3, 3), (2, 4, 4), 2, r"got \(2, 3, 3\) and \(2, 4, 4\)"),
        ((6, 3), (2, 3, 4), 2, r"got \(6, 3\) and \(2, 3, 4\)"),
        ((2, 3, 3), (2, 3, 4), 1, "expected 2 image sizes, got 1"),
    ],
)  # fmt: skip
def test_inference_refuses_mismatched_predictions(logits, boxes, sizes, message):
    model = FixedOutputDetector()
    for infer in (model.inference_softmax, model.inference_sigmoid_topk):
        with pytest.raises(ValueError, match=f"FixedOutputDetector.*{message}"):
            infer(torch.zeros(logits), torch.zeros(boxes), [(4, 4)] * sizes)


def test_inference_softmax_drops_no_object():
    model = FixedOutputDetector()
    logits = torch.tensor([[[0.0, 1.0, 5.0], [2.0, 0.0, 0.0]]])  # last column: no-object
    boxes = torch.tensor([[[0.5, 0.5, 1.0, 1.0], [0.5, 0.5, 0.5, 0.5]]])
    (result,) = model.inference_softmax(logits, boxes, [(4, 8)])
    probs = logits.softmax(-1)[0]
    assert result.pred_classes.tolist() == [1, 0]
    torch.testing.assert_close(result.scores, torch.stack([probs[0, 1], probs[1, 0]]))
    torch.testing.assert_close(result.pred_boxes.tensor[1], torch.tensor([2.0, 1.0, 6.0, 3.0]))


def test_forward_training_and_inference_template():
    model = FixedOutputDetector()
    batch = [
        _input(20, 40, boxes=[[0, 0, 10, 10]], classes=[0], height=40, width=80),
        _input(30, 30, boxes=[[0, 0, 5, 5], [5, 5, 9, 9]], classes=[0, 1]),
    ]
    model.train()
    assert model(batch)["loss_count"].item() == 3.0
    model.eval()
    outputs = model(batch)
    first = outputs[0]["instances"]
    assert first.image_size == (40, 80)  # resized to the requested original size
    # query 0: full-image-centred box (0.5, 0.5, 0.5, 0.5) -> [20, 10, 60, 30] at 80 x 40.
    torch.testing.assert_close(first.pred_boxes.tensor[0], torch.tensor([20.0, 10.0, 60.0, 30.0]))
    assert outputs[1]["instances"].image_size == (30, 30)  # defaults to the input size


def test_unimplemented_hooks_and_bad_arguments():
    base = DetectorBase(backbone=nn.Identity(), num_classes=1, pixel_mean=MEAN, pixel_std=STD)
    base.eval()
    with pytest.raises(NotImplementedError, match="forward_outputs"):
        base([_input(4, 4)])
    with pytest.raises(ValueError, match="input_format"):
        DetectorBase(
            backbone=nn.Identity(),
            num_classes=1,
            pixel_mean=MEAN,
            pixel_std=STD,
            input_format="YUV",
        )
    with pytest.raises(ValueError, match="equal length"):
        DetectorBase(backbone=nn.Identity(), num_classes=1, pixel_mean=MEAN, pixel_std=[1.0])


def test_device_follows_buffers_and_mean_not_in_state_dict():
    model = FixedOutputDetector()
    assert model.device == torch.device("cpu")
    assert "pixel_mean" not in model.state_dict()


class NaNBoxDetector(FixedOutputDetector):
    """The second query's box is NaN, as a model with broken weights gives it."""

    def forward_outputs(self, images, padding_mask, targets):
        outputs = super().forward_outputs(images, padding_mask, targets)
        boxes = outputs["pred_boxes"].clone()
        boxes[:, 1, 0] = float("nan")
        return {**outputs, "pred_boxes": boxes}


def test_non_finite_detections_name_the_image_and_the_cause():
    """detectron2's postprocessing stopped with a bare "Box tensor contains infinite or
    NaN!" that named neither the image nor a cause."""
    from detr_ext.modeling.meta_arch import NonFiniteOutputError

    model = NaNBoxDetector().eval()
    with pytest.raises(NonFiniteOutputError) as info, torch.no_grad():
        model([_input(20, 30, file_name="images/000123.jpg")])
    message = str(info.value)
    assert "image 'images/000123.jpg' hold NaN or inf (pred_boxes of 1 of the 2 detections)" in (
        message
    )
    assert "running_var" in message
    with torch.no_grad():  # finite outputs pass
        assert len(FixedOutputDetector().eval()([_input(20, 30)])[0]["instances"]) == 2
