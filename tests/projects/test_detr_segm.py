"""DETRSegm (DETR + its segmentation head): training losses and gradients, targets in the
padded frame, the frozen-detector recipe, masks at the original size, panoptic outputs,
bfloat16 autocast, and its configs. The models are the shapes configs' own, shrunk (width 32,
1 + 2 transformer layers, 10 queries); train_net runs are in test_detr_segm_train_net.py."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from detectron2.config import LazyConfig, instantiate
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.structures import BitMasks, Boxes, Instances, PolygonMasks

from detr_ext.export import ExportError, build_model
from detr_ext.modeling import DETRSegmDetectorBase
from detr_ext.modeling.meta_arch import mask_resize
from projects.detr.modeling import DETRSegm

REPO_ROOT = Path(__file__).resolve().parents[2]
SEGM_CONFIG = REPO_ROOT / "projects/detr/configs/detr_segm_shapes.py"
PANOPTIC_CONFIG = REPO_ROOT / "projects/detr/configs/detr_panoptic_shapes.py"
EMBED_DIM, NUM_QUERIES = 32, 10
MASK_MODULES = ("bbox_attention.", "mask_head.")


def tiny_config(path: Path = SEGM_CONFIG):
    """The config at ``path`` with its model shrunk as tests/projects/tiny_shapes.py does;
    the mask head keeps 8 attention maps and ``context_dim=128`` (GroupNorm(8) widths)."""
    cfg = LazyConfig.load(str(path))
    model = cfg.model
    model.embed_dim = EMBED_DIM
    model.num_queries = NUM_QUERIES
    model.select_box_nums_for_evaluation = NUM_QUERIES
    model.position_embedding.num_pos_feats = EMBED_DIM // 2
    for part, num_layers in ((model.transformer.encoder, 1), (model.transformer.decoder, 2)):
        part.update(embed_dim=EMBED_DIM, num_heads=4, feedforward_dim=64, num_layers=num_layers)
    model.mask_head.dim = EMBED_DIM + model.bbox_attention.num_heads
    model.criterion.num_points = 256
    return cfg


@pytest.fixture(scope="module")
def segm_cfg():
    return tiny_config()


def _item(height, width, boxes, classes, polygons=False, **extra):
    """A training input whose masks are the boxes' rectangles (BitMasks, or PolygonMasks)."""
    instances = Instances((height, width))
    instances.gt_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    instances.gt_classes = torch.tensor(classes, dtype=torch.int64)
    if polygons:
        instances.gt_masks = PolygonMasks(
            [[[x0, y0, x1, y0, x1, y1, x0, y1]] for x0, y0, x1, y1 in boxes]
        )
    else:
        masks = torch.zeros(len(boxes), height, width, dtype=torch.bool)
        for index, (x0, y0, x1, y1) in enumerate(boxes):
            masks[index, int(y0) : int(y1), int(x0) : int(x1)] = True
        instances.gt_masks = BitMasks(masks)
    image = torch.randint(0, 256, (3, height, width), dtype=torch.uint8)
    return {"image": image, "instances": instances, **extra}


def _batch():
    return [
        _item(64, 80, [[4, 8, 40, 60], [50, 10, 78, 30]], [0, 2]),
        _item(80, 64, [[10, 10, 20, 30]], [1], polygons=True),
    ]


def _build(cfg_model, seed=0, **overrides):
    torch.manual_seed(seed)
    cfg_model = copy.deepcopy(cfg_model)
    cfg_model.update(overrides)
    return instantiate(cfg_model)


def test_registered_and_configs_build_it(segm_cfg):
    assert META_ARCH_REGISTRY.get("DETRSegm") is DETRSegm
    assert DETRSegm.__bases__ == (DETRSegmDetectorBase,)
    assert "DETRSegmDetectorBase" not in META_ARCH_REGISTRY
    model = instantiate(segm_cfg.model)
    assert type(model) is DETRSegm
    # facebookresearch/detr's module names, for its converter.
    assert {"bbox_attention.q_linear.weight", "mask_head.adapter3.weight"} <= set(
        model.state_dict()
    )


def test_targets_hold_masks_in_the_padded_frame(segm_cfg):
    model = _build(segm_cfg.model).train()
    batch = _batch()  # 64 x 80 and 80 x 64: padded to 80 x 80
    targets = model.prepare_targets(batch)
    expected = torch.zeros(2, 80, 80, dtype=torch.bool)
    expected[0, 8:60, 4:40] = True
    expected[1, 10:30, 50:78] = True
    assert torch.equal(targets[0]["masks"], expected)
    # The polygon of image 1 rasterized in its own 80 x 64 frame, then padded on the right.
    masks = targets[1]["masks"]
    assert masks.shape == (1, 80, 80) and masks.dtype == torch.bool
    assert masks[0, 12:28, 12:18].all() and not masks[0, :, 21:].any()
    assert not masks[0, :9].any() and not masks[0, 31:].any()


def test_train_step_mask_losses_reach_head_attention_and_backbone(segm_cfg):
    model = _build(segm_cfg.model).train()
    losses = model(_batch())
    base = {f"loss_{name}{s}" for name in ("class", "bbox", "giou") for s in ("", "_0")}
    assert set(losses) == base | {"loss_mask", "loss_dice"}  # masks: last layer only
    assert all(torch.isfinite(value) and value.dim() == 0 for value in losses.values())
    assert losses["loss_mask"] > 0 and losses["loss_dice"] > 0
    (losses["loss_mask"] + losses["loss_dice"]).backward()
    parameters = dict(model.named_parameters())
    for name in (
        "mask_head.lay1.weight",
        "mask_head.adapter3.weight",  # res2 adapter
        "mask_head.out_lay.weight",
        "bbox_attention.q_linear.weight",
        "bbox_attention.k_linear.weight",
        "transformer.encoder.layers.0.ffns.0.layers.1.weight",  # through the memory
        "backbone.res2.0.conv1.weight",
        "input_proj.weight",
    ):
        grad = parameters[name].grad
        assert grad is not None and grad.abs().sum() > 0, name
    # The mask losses do not depend on the class head.
    assert parameters["class_embed.weight"].grad is None


def test_mask_losses_reach_the_backbone_through_the_fpn_levels(segm_cfg):
    # With res5 (the transformer's input) detached, the mask losses can reach the backbone
    # only through the res4 / res3 / res2 maps the mask head adds to its upsampling path.
    model = _build(segm_cfg.model).train()
    model.backbone.register_forward_hook(
        lambda module, inputs, outputs: {**outputs, "res5": outputs["res5"].detach()}
    )
    losses = model(_batch())
    (losses["loss_mask"] + losses["loss_dice"]).backward()
    assert model.backbone.res5[0].conv1.weight.grad is None  # res5 is cut off
    for block in ("res2", "res3", "res4"):
        grad = getattr(model.backbone, block)[0].conv1.weight.grad
        assert grad is not None and grad.abs().sum() > 0, block


def test_batch_with_an_image_without_objects(segm_cfg):
    model = _build(segm_cfg.model).train()
    batch = [_item(64, 80, [[4, 8, 40, 60]], [0]), _item(80, 64, [], [], polygons=True)]
    targets = model.prepare_targets(batch)
    assert targets[1]["masks"].shape == (0, 80, 80)
    losses = model(batch)
    assert all(torch.isfinite(value) for value in losses.values())
    sum(losses.values()).backward()
    assert model.mask_head.lay1.weight.grad.abs().sum() > 0


def test_freeze_detector_trains_only_the_mask_head(segm_cfg):
    model = _build(segm_cfg.model, freeze_detector=True).train()
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(name.startswith(MASK_MODULES) for name in trainable)
    assert any(name.startswith("bbox_attention.") for name in trainable)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer_cfg = copy.deepcopy(segm_cfg.optimizer)
    optimizer_cfg.params.model = model
    optimizer = instantiate(optimizer_cfg)  # the config's AdamW with weight decay
    losses = model(_batch())
    sum(losses.values()).backward()
    optimizer.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == trainable


def test_inference_masks_at_original_size(segm_cfg):
    model = _build(segm_cfg.model).eval()
    batch = [
        {
            "image": torch.randint(0, 256, (3, 64, 80), dtype=torch.uint8),
            "height": 96,
            "width": 120,
        },
        {"image": torch.randint(0, 256, (3, 48, 64), dtype=torch.uint8)},
    ]
    with torch.no_grad():
        outputs = model(batch)
    assert [set(output) for output in outputs] == [{"instances"}, {"instances"}]
    for output, size in zip(outputs, [(96, 120), (48, 64)], strict=True):
        instances = output["instances"]
        assert instances.image_size == size
        assert 0 < len(instances) <= NUM_QUERIES
        assert instances.pred_masks.dtype == torch.bool
        assert instances.pred_masks.shape == (len(instances), *size)
        assert not instances.has("pred_mask_logits")
        assert instances.pred_boxes.tensor.shape == (len(instances), 4)


def test_masks_are_cropped_to_the_image_before_resizing():
    # Padded input 64 x 80, image 48 x 64 in it, original size 96 x 128; logits at stride 4
    # (16 x 20) on for the columns 0-7, i.e. input x < 32 (the crossing of the bilinear
    # interpolation is half-way between the centres 30 and 34). Cropped to the image and
    # scaled by 2: columns < 64 of the output. Resizing the padded frame without cropping
    # would put the edge at 32 * 128 / 80 = 51.2.
    logits = torch.full((1, 16, 20), -10.0)
    logits[:, :, :8] = 10.0
    frame = ((64, 80), (48, 64), (96, 128))
    masks = mask_resize.masks_at_output_size(logits, *frame, mask_threshold=0.5)
    expected = torch.zeros(1, 96, 128, dtype=torch.bool)
    expected[:, :, :64] = True
    assert torch.equal(masks, expected)
    empty = mask_resize.masks_at_output_size(logits[:0], *frame, mask_threshold=0.5)
    assert empty.shape == (0, 96, 128)


def test_logits_and_masks_at_output_size_match_separate_resizes(monkeypatch):
    # Overlapping, unsorted query sets over several chunks: each output row is the query's own
    # resize, in the order asked for.
    monkeypatch.setattr(mask_resize, "MASK_CHUNK", 3)
    mask_logits = torch.randn(10, 16, 20, generator=torch.Generator().manual_seed(0)) * 5
    frame = ((64, 80), (48, 64), (96, 128))
    logit_queries, mask_queries = torch.tensor([7, 2, 5]), torch.tensor([0, 2, 3, 5, 8, 9])
    logits, masks = mask_resize.logits_and_masks_at_output_size(
        mask_logits, logit_queries, mask_queries, *frame, mask_threshold=0.3
    )
    resized = mask_resize.mask_logits_at_output_size(mask_logits, *frame)
    assert logits.dtype == torch.float32 and torch.equal(logits, resized[logit_queries])
    assert torch.equal(masks, resized[mask_queries].sigmoid() > 0.3)
    with pytest.raises(ValueError, match="distinct"):
        mask_resize.logits_and_masks_at_output_size(
            mask_logits, torch.tensor([1, 1]), mask_queries, *frame, mask_threshold=0.3
        )


@pytest.fixture(scope="module")
def panoptic_cfg():
    cfg = tiny_config(PANOPTIC_CONFIG)
    # Random weights never reach DETR's 0.85; every query takes part.
    cfg.model.panoptic_score_threshold = 0.0
    cfg.model.panoptic_overlap_threshold = 0.0
    cfg.model.panoptic_min_area = 1
    return cfg


def test_panoptic_outputs_follow_detectron2_format(panoptic_cfg):
    model = _build(panoptic_cfg.model).eval()
    assert model.num_classes == 4 and model.is_thing == [True, True, True, False]
    batch = [
        {"image": torch.randint(0, 256, (3, 64, 80), dtype=torch.uint8), "height": 32, "width": 40}
    ]
    with torch.no_grad():
        (output,) = model(batch)
    panoptic, segments = output["panoptic_seg"]
    assert panoptic.dtype == torch.int32 and panoptic.shape == (32, 40)
    assert segments, "every query takes part: some segment must win pixels"
    ids = sorted(int(i) for i in panoptic.unique() if i != 0)
    assert [segment["id"] for segment in segments] == list(range(1, len(segments) + 1))
    assert ids == [segment["id"] for segment in segments]
    for segment in segments:
        assert set(segment) == {"id", "isthing", "category_id", "score", "area"}
        assert segment["area"] == int((panoptic == segment["id"]).sum())
        assert segment["isthing"] == (segment["category_id"] < 3)
    instances = output["instances"]
    assert instances.image_size == (32, 40)
    assert torch.all(instances.pred_classes < 3)  # stuff is not an instance
    assert instances.pred_masks.shape == (len(instances), 32, 40)

    # Every query predicting the stuff class: no instances, and one merged stuff segment.
    with torch.no_grad():
        model.class_embed.bias[3] += 100.0
        (output,) = model(batch)
    panoptic, segments = output["panoptic_seg"]
    assert len(output["instances"]) == 0
    assert output["instances"].pred_masks.shape == (0, 32, 40)
    assert [(s["id"], s["isthing"], s["category_id"]) for s in segments] == [(1, False, 3)]
    assert segments[0]["area"] == int((panoptic == 1).sum()) > 0


def test_panoptic_and_instances_resize_each_query_mask_once(panoptic_cfg, monkeypatch):
    # Every query passes the panoptic threshold (0): the thing instances reuse those resizes.
    model = _build(panoptic_cfg.model).eval()
    batch = [
        {"image": torch.randint(0, 256, (3, 64, 80), dtype=torch.uint8), "height": 48, "width": 60}
    ]
    with torch.no_grad():
        images, padding_mask = model.preprocess_image(batch)
        outputs = model.forward_outputs(images, padding_mask, None)
        results = model.inference(outputs, images.image_sizes)
    resized_planes = []
    interpolate = F.interpolate

    def counting_interpolate(input, *args, **kwargs):
        resized_planes.append(input.shape[0])
        return interpolate(input, *args, **kwargs)

    monkeypatch.setattr(mask_resize.F, "interpolate", counting_interpolate)
    with torch.no_grad():
        (output,) = model.postprocess(results, batch, images.image_sizes)
    assert len(output["instances"]) > 0 and output["panoptic_seg"][1]
    # Each query once to the padded input and once to the output size.
    assert sum(resized_planes) == 2 * NUM_QUERIES


def test_bfloat16_autocast_forward(segm_cfg):
    """Under autocast the mask head runs in bfloat16, its losses in float32."""
    model = _build(segm_cfg.model).train()
    mask_head_dtypes = []
    model.mask_head.lay1.register_forward_hook(
        lambda module, inputs, output: mask_head_dtypes.append(output.dtype) and None
    )
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = model(_batch())
    assert mask_head_dtypes == [torch.bfloat16]
    for key, value in losses.items():
        assert value.dtype == torch.float32 and torch.isfinite(value), key
    sum(losses.values()).backward()
    grad = model.mask_head.lay1.weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    model.eval()
    image = {"image": torch.randint(0, 256, (3, 64, 80), dtype=torch.uint8)}
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        (output,) = model([image])
    assert output["instances"].pred_masks.dtype == torch.bool
    assert output["instances"].pred_masks.shape[1:] == (64, 80)


def test_rejects_inconsistent_settings(segm_cfg):
    cfg = copy.deepcopy(segm_cfg.model)
    cfg.backbone.out_features = ["res3", "res4", "res5"]
    with pytest.raises(ValueError, match="missing \\['res2'\\]"):
        instantiate(cfg)
    with pytest.raises(ValueError, match="fpn_dims"):
        _build(segm_cfg.model, mask_in_features=["res5", "res3", "res2"])
    with pytest.raises(ValueError, match="is_thing"):
        _build(segm_cfg.model, panoptic_on=True)
    with pytest.raises(ValueError, match="gt_masks"):
        model = _build(segm_cfg.model).train()
        item = _item(64, 80, [[4, 8, 40, 60]], [0])
        item["instances"].remove("gt_masks")
        model([item])


def test_export_refuses_mask_models(segm_cfg):
    with pytest.raises(ExportError, match="masks"):
        build_model(segm_cfg)
