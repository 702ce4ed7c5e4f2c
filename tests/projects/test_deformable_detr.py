"""Deformable DETR project: configs, geometry (reference points, proposals), training and
inference forward of the three variants, backend parity, and detrex checkpoint names."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from detectron2.config import LazyConfig, instantiate
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.structures import Boxes, Instances
from omegaconf import OmegaConf
from torch import nn

from detr_ext.layers import MultiScaleDeformableAttention
from detr_ext.layers.box_ops import inverse_sigmoid
from detr_ext.ops import compiled_kernel_available
from projects.deformable_detr.modeling import (
    DeformableCriterion,
    DeformableDETR,
    DeformableDetrTransformer,
    DeformableDetrTransformerDecoder,
    DeformableDetrTransformerEncoder,
)

from .key_lists import read_key_list, synthetic_state_dict

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = REPO_ROOT / "projects" / "deformable_detr" / "configs"

# config file -> (with_box_refine, as_two_stage, detrex key list)
R50_CONFIGS = {
    "deformable_detr_r50_50ep.py": (False, False, "detrex_deformable_detr_r50.txt"),
    "deformable_detr_r50_with_box_refinement_50ep.py": (
        True,
        False,
        "detrex_deformable_detr_r50_box_refine.txt",
    ),
    "deformable_detr_r50_two_stage_50ep.py": (
        True,
        True,
        "detrex_deformable_detr_r50_two_stage.txt",
    ),
}
VARIANTS = {"plain": (False, False), "box_refine": (True, False), "two_stage": (True, True)}


def load_config(name: str):
    return LazyConfig.load(str(CONFIG_DIR / name))


def tiny_model_config(with_box_refine: bool, as_two_stage: bool, dropout: float = 0.0):
    """The shapes config shrunk further: width 32, 1 + 2 layers, 6 queries."""
    cfg = load_config("deformable_detr_shapes.py")
    model = cfg.model
    model.neck.out_channels = 32
    model.neck.norm_layer.num_groups = 8
    model.neck.norm_layer.num_channels = 32
    model.position_embedding.num_pos_feats = 16
    for part, num_layers in ((model.transformer.encoder, 1), (model.transformer.decoder, 2)):
        part.embed_dim = 32
        part.num_heads = 4
        part.feedforward_dim = 64
        part.num_layers = num_layers
        part.attn_dropout = dropout
        part.ffn_dropout = dropout
    model.embed_dim = 32
    model.num_queries = 6
    model.select_box_nums_for_evaluation = 5
    model.with_box_refine = with_box_refine
    model.as_two_stage = as_two_stage
    return model


def tiny_model(variant: str) -> DeformableDETR:
    return instantiate(tiny_model_config(*VARIANTS[variant]))


def tiny_batch(with_instances: bool = True) -> list[dict]:
    """Two images of different sizes (so the batch is padded), with 2 and 1 objects."""
    generator = torch.Generator().manual_seed(0)
    inputs = []
    for (height, width), boxes, classes in (
        ((64, 48), [[4.0, 6.0, 30.0, 40.0], [20.0, 30.0, 46.0, 60.0]], [0, 2]),
        ((48, 64), [[10.0, 8.0, 50.0, 40.0]], [1]),
    ):
        image = torch.randint(0, 256, (3, height, width), generator=generator).float()
        item = {"image": image, "height": 2 * height, "width": 2 * width}
        if with_instances:
            instances = Instances((height, width))
            instances.gt_boxes = Boxes(torch.tensor(boxes))
            instances.gt_classes = torch.tensor(classes)
            item["instances"] = instances
        inputs.append(item)
    return inputs


# ------------------------------------------------------------------ configs


@pytest.mark.parametrize("config_name", sorted(R50_CONFIGS))
def test_r50_configs_build_the_detrex_models(config_name):
    cfg = load_config(config_name)
    with_box_refine, as_two_stage, _ = R50_CONFIGS[config_name]
    assert cfg.model.with_box_refine == with_box_refine
    assert cfg.model.as_two_stage == as_two_stage
    assert cfg.train.max_iter == 50 * 7500
    assert cfg.train.init_checkpoint == "detectron2://ImageNetPretrained/torchvision/R-50.pkl"
    assert cfg.train.clip_grad.enabled and cfg.train.clip_grad.params.max_norm == 0.1
    # detrex's recipe (not the authors'): lr 1e-4, a tenth of it for the backbone only.
    assert cfg.optimizer.lr == 1e-4 and cfg.optimizer.weight_decay == 1e-4
    lr_factor = cfg.optimizer.params.lr_factor_func
    assert lr_factor("backbone.res2.0.conv1.weight") == 0.1
    assert lr_factor("transformer.encoder.layers.0.attentions.0.sampling_offsets.weight") == 1
    assert lr_factor("transformer.reference_points.weight") == 1
    assert lr_factor("transformer.encoder.layers.0.attentions.0.value_proj.weight") == 1
    # detrex's loss weights, matching costs and detections per image.
    criterion = cfg.model.criterion
    assert dict(criterion.weight_dict) == {"loss_class": 1.0, "loss_bbox": 5.0, "loss_giou": 2.0}
    matcher = criterion.matcher
    assert (matcher.cost_class, matcher.cost_bbox, matcher.cost_giou) == (2.0, 5.0, 2.0)
    assert cfg.model.num_queries == 300
    assert cfg.model.select_box_nums_for_evaluation == 300
    assert cfg.model.backbone.freeze_at == 1
    # The learning rate drops 10x at epoch 40 of 50.
    scheduler = instantiate(cfg.lr_multiplier)
    assert scheduler(39.9 / 50) == pytest.approx(1.0)
    assert scheduler(40.1 / 50) == pytest.approx(0.1)

    model = instantiate(cfg.model)
    assert isinstance(model, DeformableDETR)
    assert model.transformer.as_two_stage == as_two_stage
    assert model.transformer.encoder.num_layers == model.transformer.decoder.num_layers == 6
    num_pred = 7 if as_two_stage else 6
    assert len(model.class_embed) == len(model.bbox_embed) == num_pred
    assert model.class_embed[0].out_features == 80
    # Heads are shared across layers only without box refinement.
    assert (model.class_embed[0] is model.class_embed[1]) == (not with_box_refine)
    assert (model.transformer.decoder.bbox_embed is model.bbox_embed) == with_box_refine
    assert (model.transformer.decoder.class_embed is model.class_embed) == as_two_stage
    assert hasattr(model, "query_embedding") != as_two_stage
    assert model.transformer.encoder.layers[0].attentions[0].num_points == 4
    assert model.transformer.decoder.layers[0].ffns[0].layers[1].in_features == 1024


@pytest.mark.parametrize("config_name", [*sorted(R50_CONFIGS), "deformable_detr_shapes.py"])
def test_configs_hold_only_the_config_sections_and_resolve(config_name):
    cfg = load_config(config_name)
    assert sorted(cfg) == ["dataloader", "lr_multiplier", "model", "optimizer", "train"]
    OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves


def test_shapes_config_is_small_and_on_cpu():
    cfg = load_config("deformable_detr_shapes.py")
    assert cfg.train.device == "cpu"
    assert cfg.dataloader.train.dataset.names == "shapes_train"
    model = instantiate(cfg.model)
    assert model.num_classes == 3 and model.num_queries == 50
    assert model.transformer.num_feature_levels == 3
    assert model.transformer.embed_dim == 128
    assert len(model.transformer.encoder.layers) == len(model.transformer.decoder.layers) == 2
    assert sum(p.numel() for p in model.parameters()) < 15_000_000


def test_meta_arch_is_registered():
    assert META_ARCH_REGISTRY.get("DeformableDETR") is DeformableDETR


def test_network_is_shared_and_old_names_still_resolve():
    """Deformable DETR's network and criterion live in detr_ext (projects scaffolded from it
    never import this project): ``DeformableDETR`` is the registered subclass of the
    unregistered ``DeformableDETRDetectorBase``, and the names that configs and saved
    ``config.yaml`` files use (detectron2 saves the shortest importable path,
    ``projects.deformable_detr.DeformableDetrTransformer`` before the move) still build the
    same classes."""
    import projects.deformable_detr
    import projects.deformable_detr.modeling
    from detr_ext.modeling import DeformableDETRDetectorBase

    assert DeformableDETR.__bases__ == (DeformableDETRDetectorBase,)
    assert "DeformableDETRDetectorBase" not in META_ARCH_REGISTRY
    moved = (
        DeformableDetrTransformer,
        DeformableDetrTransformerEncoder,
        DeformableDetrTransformerDecoder,
        DeformableCriterion,
    )
    for cls in moved:
        assert cls.__module__.startswith(("detr_ext.layers.", "detr_ext.modeling.")), cls
        assert getattr(projects.deformable_detr.modeling, cls.__name__) is cls
        assert getattr(projects.deformable_detr, cls.__name__) is cls
    layer = {"embed_dim": 32, "num_heads": 4, "feedforward_dim": 64, "num_layers": 1}
    transformer = instantiate(
        {
            "_target_": "projects.deformable_detr.DeformableDetrTransformer",
            "encoder": {
                "_target_": "projects.deformable_detr.DeformableDetrTransformerEncoder",
                **layer,
            },
            "decoder": {
                "_target_": "projects.deformable_detr.modeling.DeformableDetrTransformerDecoder",
                **layer,
            },
        }
    )
    assert type(transformer) is DeformableDetrTransformer
    assert type(transformer.encoder) is DeformableDetrTransformerEncoder
    assert type(transformer.decoder) is DeformableDetrTransformerDecoder


def test_two_stage_without_box_refinement_is_rejected():
    cfg = tiny_model_config(with_box_refine=False, as_two_stage=True)
    with pytest.raises(ValueError, match="with_box_refine"):
        instantiate(cfg)


def test_mismatched_transformer_two_stage_flag_is_rejected():
    cfg = tiny_model_config(with_box_refine=True, as_two_stage=False)
    cfg.transformer.as_two_stage = True
    with pytest.raises(ValueError, match="as_two_stage"):
        instantiate(cfg)


# ------------------------------------------------------------------ geometry


def test_get_valid_ratio():
    mask = torch.zeros(2, 4, 5, dtype=torch.bool)
    mask[1, 3:, :] = True
    mask[1, :, 2:] = True
    ratios = DeformableDetrTransformer.get_valid_ratio(mask)
    torch.testing.assert_close(ratios, torch.tensor([[1.0, 1.0], [2 / 5, 3 / 4]]))


def test_get_reference_points_hand_computed():
    # Level 0 is 2 x 4, level 1 is 1 x 2. Image 1 is valid on the top-left 1 x 2 of level 0
    # and the left 1 x 1 of level 1.
    spatial_shapes = torch.tensor([[2, 4], [1, 2]])
    valid_ratios = torch.tensor([[[1.0, 1.0], [1.0, 1.0]], [[0.5, 0.5], [0.5, 1.0]]])
    points = DeformableDetrTransformer.get_reference_points(spatial_shapes, valid_ratios, "cpu")
    assert points.shape == (2, 10, 2, 2)

    # Image 0 (no padding): pixel centers normalized by the level size, same on every level.
    level0 = [(x / 8, y / 4) for y in (1, 3) for x in (1, 3, 5, 7)]
    level1 = [(0.25, 0.5), (0.75, 0.5)]
    expected0 = torch.tensor(level0 + level1)[:, None, :].expand(10, 2, 2)
    torch.testing.assert_close(points[0], expected0)

    # Image 1, level 0 pixel (row 0, col 1): center (1.5, 0.5) over the valid size (2, 1)
    # gives (0.75, 0.5) of the image; on level 0 that is (0.75 * 0.5, 0.5 * 0.5) of the
    # padded map and on level 1 (0.75 * 0.5, 0.5 * 1.0).
    torch.testing.assert_close(points[1, 1], torch.tensor([[0.375, 0.25], [0.375, 0.5]]))
    # Level 0 pixel (row 1, col 3), on padding: (3.5 / 2, 1.5 / 1) = (1.75, 1.5) of the image.
    torch.testing.assert_close(points[1, 7], torch.tensor([[0.875, 0.75], [0.875, 1.5]]))
    # Level 1 pixel (0, 0): (0.5 / 1, 0.5 / 1) of the image.
    torch.testing.assert_close(points[1, 8], torch.tensor([[0.25, 0.25], [0.25, 0.5]]))


def _identity_two_stage_transformer(channels: int, num_levels: int) -> DeformableDetrTransformer:
    encoder = DeformableDetrTransformerEncoder(
        channels, 2, 16, 0.0, 0.0, num_layers=1, num_feature_levels=num_levels
    )
    decoder = DeformableDetrTransformerDecoder(
        channels, 2, 16, 0.0, 0.0, num_layers=1, num_feature_levels=num_levels
    )
    transformer = DeformableDetrTransformer(
        encoder, decoder, num_levels, as_two_stage=True, two_stage_num_proposals=3
    )
    with torch.no_grad():
        transformer.enc_output.weight.copy_(torch.eye(channels))
        transformer.enc_output.bias.zero_()
    return transformer


def test_gen_encoder_output_proposals_hand_computed():
    # Level 0: 2 x 4, level 1: 1 x 2, level 2: 1 x 64 (its border pixels fall outside
    # (0.01, 0.99)). Image 1 is padded: valid 1 x 2 on level 0, 1 x 1 on level 1, 1 x 60 on
    # level 2.
    spatial_shapes = torch.tensor([[2, 4], [1, 2], [1, 64]])
    masks = [torch.zeros(2, h, w, dtype=torch.bool) for h, w in spatial_shapes.tolist()]
    masks[0][1, 1:, :] = True
    masks[0][1, :, 2:] = True
    masks[1][1, :, 1:] = True
    masks[2][1, :, 60:] = True
    padding_mask = torch.cat([m.flatten(1) for m in masks], 1)
    channels = 4
    memory = torch.randn(2, padding_mask.shape[1], channels)
    transformer = _identity_two_stage_transformer(channels, 3)

    output_memory, proposals = transformer.gen_encoder_output_proposals(
        memory, padding_mask, spatial_shapes
    )
    assert proposals.shape == (2, 74, 4) and output_memory.shape == (2, 74, channels)

    def logit(v):
        return math.log(v / (1 - v))

    def box(cx, cy, size):
        return torch.tensor([logit(cx), logit(cy), logit(size), logit(size)])

    inf = torch.full((4,), float("inf"))
    # Image 0, level 0, row 1 col 2: ((2 + 0.5) / 4, (1 + 0.5) / 2), size 0.05.
    torch.testing.assert_close(proposals[0, 6], box(0.625, 0.75, 0.05))
    # Image 0, level 1, col 1: size 0.05 * 2.
    torch.testing.assert_close(proposals[0, 9], box(0.75, 0.5, 0.1))
    # Image 1, level 0, col 1: normalized by the valid width 2 and height 1.
    torch.testing.assert_close(proposals[1, 1], box(0.75, 0.5, 0.05))
    # Image 1, level 1, col 0.
    torch.testing.assert_close(proposals[1, 8], box(0.5, 0.5, 0.1))
    # Image 1, level 2, cols 0 and 59 of 60 valid: 0.5 / 60 < 0.01 and 59.5 / 60 > 0.99.
    torch.testing.assert_close(proposals[1, 10], inf)
    torch.testing.assert_close(proposals[1, 10 + 59], inf)
    # Image 1, level 2, col 10: (10.5 / 60, 0.5), size 0.05 * 4.
    torch.testing.assert_close(proposals[1, 20], box(10.5 / 60, 0.5, 0.2))
    # Padding is inf.
    for index in (2, 3, 4, 7, 9, 10 + 60, 73):
        torch.testing.assert_close(proposals[1, index], inf)
    # Level 2 of image 0: col 0 (0.5 / 64 < 0.01) and col 63 are invalid, col 1 is not.
    torch.testing.assert_close(proposals[0, 10], inf)
    torch.testing.assert_close(proposals[0, 73], inf)
    torch.testing.assert_close(proposals[0, 11], box(1.5 / 64, 0.5, 0.2))

    # Memory: zeroed where the proposal is padded or invalid, then Linear (identity here) and
    # LayerNorm (default affine), which maps zeros to zeros.
    invalid = torch.isinf(proposals).all(-1)
    # Image 0: 2 out of range; image 1: 6 + 1 + 4 padded and 2 out of range.
    assert invalid.sum() == 2 + 11 + 2
    expected = nn.functional.layer_norm(memory, (channels,))
    expected[invalid] = 0.0
    torch.testing.assert_close(output_memory, expected)
    assert torch.isfinite(proposals[~invalid]).all()


def test_proposal_pos_embed_matches_sine_formula():
    proposals = torch.tensor([[[0.0, 1.0, -2.0, 0.5]]])
    embed = DeformableDetrTransformer.get_proposal_pos_embed(proposals, num_pos_feats=4)
    assert embed.shape == (1, 1, 16)
    dim_t = torch.tensor([1.0, 1.0, 100.0, 100.0])  # 10000 ** (2 * (i // 2) / 4)
    expected = []
    for value in proposals.sigmoid()[0, 0]:
        angles = value * 2 * math.pi / dim_t
        expected += [angles[0].sin(), angles[1].cos(), angles[2].sin(), angles[3].cos()]
    torch.testing.assert_close(embed[0, 0], torch.stack(expected))


# ------------------------------------------------------------------ forward


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_train_forward_losses_and_backward(variant):
    model = tiny_model(variant)
    model.train()
    losses = model(tiny_batch())
    base = {"loss_class", "loss_bbox", "loss_giou"}
    expected_keys = base | {f"{key}_0" for key in base}  # 2 decoder layers: one aux output
    if variant == "two_stage":
        expected_keys |= {f"{key}_enc" for key in base}
    assert set(losses) == expected_keys
    for key, value in losses.items():
        assert value.dim() == 0 and torch.isfinite(value), key
    sum(losses.values()).backward()
    # The position / level embeddings only feed the offset and weight predictors, whose
    # weights start at zero, so their first gradient is zero, but it must flow.
    assert model.get_parameter("transformer.level_embeds").grad is not None
    for name in (
        "transformer.encoder.layers.0.attentions.0.sampling_offsets.weight",
        "transformer.decoder.layers.1.attentions.1.value_proj.weight",
        "class_embed.0.weight",
        "bbox_embed.0.layers.2.weight",
        "neck.convs.0.conv.weight",
        "backbone.res5.0.conv1.weight",
    ):
        grad = model.get_parameter(name).grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, name


def test_losses_are_weighted_and_encoder_loss_is_class_agnostic():
    model = tiny_model("two_stage")
    model.train()
    batch = tiny_batch()
    images, padding_mask = model.preprocess_image(batch)
    targets = model.prepare_targets(batch)
    outputs = model.forward_outputs(images, padding_mask, targets)
    criterion = model.criterion
    assert isinstance(criterion, DeformableCriterion)
    raw = criterion.compute_losses(outputs, targets)
    weighted = criterion(outputs, targets)
    for key, weight in (
        ("loss_class_enc", 1.0),
        ("loss_bbox_enc", 5.0),
        ("loss_bbox_0", 5.0),
        ("loss_giou", 2.0),
    ):
        torch.testing.assert_close(weighted[key], raw[key] * weight)
    # The encoder loss equals the plain loss against all-zero labels.
    zero_targets = [{**t, "labels": torch.zeros_like(t["labels"])} for t in targets]
    plain = criterion.layer_losses(outputs["enc_outputs"], zero_targets, 3.0, None)
    torch.testing.assert_close(raw["loss_class_enc"], plain["loss_class"])
    # One proposal per encoder position: the 64 x 64 batch gives maps of 8 x 8, 4 x 4, 2 x 2.
    assert outputs["enc_outputs"]["pred_logits"].shape == (2, 84, 3)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_eval_forward_returns_top_k_instances(variant):
    model = tiny_model(variant)
    model.eval()
    with torch.no_grad():
        results = model(tiny_batch(with_instances=False))
    assert len(results) == 2
    for result, (height, width) in zip(results, [(128, 96), (96, 128)], strict=True):
        instances = result["instances"]
        assert instances.image_size == (height, width)
        assert len(instances) == 5
        assert torch.all(instances.scores[:-1] >= instances.scores[1:])
        assert instances.pred_classes.min() >= 0 and instances.pred_classes.max() < 3
        boxes = instances.pred_boxes.tensor
        assert torch.isfinite(boxes).all()
        assert (boxes[:, 2:] >= boxes[:, :2]).all()
        assert boxes[:, 2].max() <= width and boxes[:, 3].max() <= height


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_decoder_reference_refinement(variant):
    model = tiny_model(variant).eval()
    with torch.no_grad():
        # The last box layers start at zero (no refinement yet); make them act.
        for head in model.bbox_embed:
            head.layers[-1].weight.normal_(0.0, 0.1)
        images, padding_mask = model.preprocess_image(tiny_batch(with_instances=False))
        feats, masks, pos = model.multi_level_inputs(images, padding_mask)
        query_embed = None if model.as_two_stage else model.query_embedding.weight
        states, init_reference, references, _, _ = model.transformer(feats, masks, pos, query_embed)
    assert states.shape == (2, 2, 6, 32)
    if variant == "plain":
        # No refinement: every layer samples around the learned 2-d points.
        assert init_reference.shape == references.shape[1:] == (2, 6, 2)
        torch.testing.assert_close(references, init_reference.expand(2, -1, -1, -1))
        return
    assert references.shape == (2, 2, 6, 4)
    with torch.no_grad():
        previous = init_reference
        for layer in range(2):
            delta = model.bbox_embed[layer](states[layer])
            if previous.shape[-1] == 2:  # one-stage: a point gets a size at the first layer
                expected = torch.cat(
                    [delta[..., :2] + inverse_sigmoid(previous), delta[..., 2:]], -1
                )
            else:
                expected = delta + inverse_sigmoid(previous)
            torch.testing.assert_close(references[layer], expected.sigmoid())
            previous = references[layer]
    assert init_reference.shape[-1] == (4 if variant == "two_stage" else 2)
    assert not torch.allclose(references[0], references[1])


def _box_head_gradients(model: DeformableDETR, boxes: torch.Tensor) -> list[float]:
    """``|grad|`` summed over each box head's parameters after backpropagating ``boxes``
    alone (0 for a head the gradient does not reach)."""
    model.zero_grad(set_to_none=True)
    boxes.sum().backward(retain_graph=True)
    return [
        sum(float(p.grad.abs().sum()) for p in head.parameters() if p.grad is not None)
        for head in model.bbox_embed
    ]


@pytest.mark.parametrize("variant", ["box_refine", "two_stage"])
def test_box_refinement_stops_gradient_between_layers(variant):
    """Each layer refines a detached copy of the previous layer's box (Deformable DETR, unlike
    DINO's look-forward-twice): the last layer's boxes train only the last box head, and an
    earlier layer's boxes train their own head."""
    model = tiny_model(variant).train()
    with torch.no_grad():
        # The last box layers start at zero, which would hide a gradient through them.
        for head in model.bbox_embed:
            head.layers[-1].weight.normal_(0.0, 0.1)
    batch = tiny_batch()
    outputs = model.forward_outputs(*model.preprocess_image(batch), model.prepare_targets(batch))
    num_layers = model.transformer.decoder.num_layers
    assert num_layers == 2

    final = _box_head_gradients(model, outputs["pred_boxes"])
    assert final[num_layers - 1] > 0
    assert final[: num_layers - 1] == [0.0] * (num_layers - 1), final
    if variant == "two_stage":
        # The proposals' head (index num_layers) only seeds detached reference boxes.
        assert final[num_layers] == 0.0, final
    first = _box_head_gradients(model, outputs["aux_outputs"][0]["pred_boxes"])
    assert first[0] > 0 and first[1:num_layers] == [0.0] * (num_layers - 1), first


@pytest.mark.skipif(
    compiled_kernel_available("cpu", torch.float64) is not None,
    reason="compiled MSDA CPU kernel not built",
)
@pytest.mark.parametrize("variant", ["box_refine", "two_stage"])
def test_compiled_and_pytorch_backends_agree(variant):
    model = tiny_model(variant).double().eval()
    batch = [{**item, "image": item["image"].double()} for item in tiny_batch(False)]
    images, padding_mask = model.preprocess_image(batch)
    outputs = {}
    for backend in ("compiled", "pytorch"):
        for module in model.modules():
            if isinstance(module, MultiScaleDeformableAttention):
                module.backend = backend
        with torch.no_grad():
            outputs[backend] = model.forward_outputs(images, padding_mask, None)
    for key in ("pred_logits", "pred_boxes"):
        assert outputs["compiled"][key].dtype == torch.float64
        torch.testing.assert_close(
            outputs["compiled"][key], outputs["pytorch"][key], rtol=1e-10, atol=1e-10
        )


# ------------------------------------------------------------------ checkpoints


@pytest.mark.parametrize("config_name", sorted(R50_CONFIGS))
def test_detrex_checkpoint_converts_and_loads_strictly(config_name):
    import projects.deformable_detr.checkpoint  # noqa: F401  (registers the converter)
    from detr_ext.checkpoint import get_converter

    reference = read_key_list(R50_CONFIGS[config_name][2])
    source = synthetic_state_dict(reference)

    model = instantiate(load_config(config_name).model)
    target = model.state_dict()
    assert {k: tuple(v.shape) for k, v in target.items()} == reference

    converted, report = get_converter("deformable_detr.detrex").convert(source, target)
    assert report.ok, report.summary()
    assert set(converted) == set(reference)
    incompatible = model.load_state_dict(converted, strict=True)
    assert not incompatible.missing_keys and not incompatible.unexpected_keys
    for key in ("transformer.level_embeds", "neck.extra_convs.0.conv.weight"):
        torch.testing.assert_close(model.state_dict()[key], source[key])


# ------------------------------------------------------------------ parity with a reference


def _hf_to_ours_state_dict(hf, with_box_refine: bool, as_two_stage: bool) -> dict:
    """Rename the transformer and heads of a transformers ``DeformableDetrForObjectDetection``
    (a port of the original Deformable DETR) into our (detrex) names."""
    params = {name: value.detach() for name, value in hf.named_parameters()}
    state = {"transformer.level_embeds": params["model.level_embed"]}
    msda = ("sampling_offsets", "attention_weights", "value_proj", "output_proj")
    for layer_index in range(len(hf.model.encoder.layers)):
        src, dst = (
            f"model.encoder.layers.{layer_index}.",
            f"transformer.encoder.layers.{layer_index}.",
        )
        for kind in ("weight", "bias"):
            for name in msda:
                state[f"{dst}attentions.0.{name}.{kind}"] = params[f"{src}self_attn.{name}.{kind}"]
            state[f"{dst}norms.0.{kind}"] = params[f"{src}self_attn_layer_norm.{kind}"]
            state[f"{dst}norms.1.{kind}"] = params[f"{src}final_layer_norm.{kind}"]
            state[f"{dst}ffns.0.layers.0.0.{kind}"] = params[f"{src}mlp.fc1.{kind}"]
            state[f"{dst}ffns.0.layers.1.{kind}"] = params[f"{src}mlp.fc2.{kind}"]
    for layer_index in range(len(hf.model.decoder.layers)):
        src, dst = (
            f"model.decoder.layers.{layer_index}.",
            f"transformer.decoder.layers.{layer_index}.",
        )
        for kind in ("weight", "bias"):
            state[f"{dst}attentions.0.attn.in_proj_{kind}"] = torch.cat(
                [params[f"{src}self_attn.{x}_proj.{kind}"] for x in "qkv"]
            )
            state[f"{dst}attentions.0.attn.out_proj.{kind}"] = params[
                f"{src}self_attn.o_proj.{kind}"
            ]
            for name in msda:
                state[f"{dst}attentions.1.{name}.{kind}"] = params[
                    f"{src}encoder_attn.{name}.{kind}"
                ]
            for norm_index, norm in enumerate(
                ("self_attn_layer_norm", "encoder_attn_layer_norm", "final_layer_norm")
            ):
                state[f"{dst}norms.{norm_index}.{kind}"] = params[f"{src}{norm}.{kind}"]
            state[f"{dst}ffns.0.layers.0.0.{kind}"] = params[f"{src}mlp.fc1.{kind}"]
            state[f"{dst}ffns.0.layers.1.{kind}"] = params[f"{src}mlp.fc2.{kind}"]
    for name in (
        "reference_points",
        "enc_output",
        "enc_output_norm",
        "pos_trans",
        "pos_trans_norm",
    ):
        for kind in ("weight", "bias"):
            if f"model.{name}.{kind}" in params:
                state[f"transformer.{name}.{kind}"] = params[f"model.{name}.{kind}"]
    if not as_two_stage:
        state["query_embedding.weight"] = params["model.query_position_embeddings.weight"]
    # The heads the decoder uses for refinement / proposals are the output heads (tied).
    for index, (class_head, box_head) in enumerate(zip(hf.class_embed, hf.bbox_embed)):
        for kind in ("weight", "bias"):
            state[f"class_embed.{index}.{kind}"] = getattr(class_head, kind).detach()
            for layer_index, layer in enumerate(box_head.layers):
                state[f"bbox_embed.{index}.layers.{layer_index}.{kind}"] = getattr(
                    layer, kind
                ).detach()
    for key in list(state):
        if (with_box_refine and key.startswith("bbox_embed.")) or (
            as_two_stage and key.startswith("class_embed.")
        ):
            state["transformer.decoder." + key] = state[key]
    return state


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_matches_transformers_port_of_the_original(variant):
    """Same weights and inputs as transformers' ``DeformableDetrForObjectDetection`` (a port of
    the authors' code, which detrex also follows) give the same predictions, in float64."""
    transformers = pytest.importorskip("transformers")
    with_box_refine, as_two_stage = VARIANTS[variant]
    channels, num_queries, num_classes = 32, 6, 3
    config = transformers.DeformableDetrConfig(
        d_model=channels,
        encoder_layers=1,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        num_feature_levels=3,
        num_queries=num_queries,
        two_stage_num_proposals=num_queries,
        with_box_refine=with_box_refine,
        two_stage=as_two_stage,
        num_labels=num_classes,
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        use_timm_backbone=False,
        use_pretrained_backbone=False,
        backbone_config=transformers.ResNetConfig(
            embedding_size=8,
            hidden_sizes=[8, 8, 8, 8],
            depths=[1, 1, 1, 1],
            out_features=["stage2", "stage3", "stage4"],
        ),
        disable_custom_kernels=True,
    )
    hf = transformers.DeformableDetrForObjectDetection(config).double().eval()
    if not with_box_refine:
        # Without refinement, one head pair serves every layer (as in detrex).
        assert hf.bbox_embed[1].layers[0].weight is hf.bbox_embed[0].layers[0].weight
    with torch.no_grad():
        for name, parameter in hf.named_parameters():
            if "backbone" not in name:
                parameter.normal_(0.0, 0.2)
        if as_two_stage:
            # Proposals are ranked by the first logit, not the best one: make the two differ.
            hf.model.decoder.class_embed[-1].bias.copy_(torch.tensor([-2.0, 2.0, 2.0]))

    # Multi-scale inputs with padding in image 1; the backbone and input projections are
    # bypassed on both sides.
    shapes = [(8, 10), (4, 5), (2, 3)]
    feats = [torch.randn(2, channels, h, w, dtype=torch.float64) for h, w in shapes]
    masks = [torch.zeros(2, h, w, dtype=torch.bool) for h, w in shapes]
    masks[0][1, 6:] = True
    masks[0][1, :, 7:] = True
    masks[1][1, 3:] = True
    masks[1][1, :, 4:] = True
    masks[2][1, :, 2:] = True

    class GivenFeatures(nn.Module):
        def forward(self, pixel_values, pixel_mask):
            return [(feat, ~mask) for feat, mask in zip(feats, masks, strict=True)]

    hf.model.backbone = GivenFeatures()
    hf.model.input_proj = nn.ModuleList([nn.Identity() for _ in shapes])
    with torch.no_grad():
        expected = hf(pixel_values=torch.zeros(2, 3, 64, 80, dtype=torch.float64))
        pos_embeds = [
            hf.model.position_embedding(
                shape=feat.shape, device=feat.device, dtype=torch.float64, mask=~mask
            )
            for feat, mask in zip(feats, masks, strict=True)
        ]

    model = instantiate(tiny_model_config(with_box_refine, as_two_stage)).double().eval()
    state = _hf_to_ours_state_dict(hf, with_box_refine, as_two_stage)
    incompatible = model.load_state_dict(state, strict=False)
    assert not incompatible.unexpected_keys
    assert all(key.startswith(("backbone.", "neck.")) for key in incompatible.missing_keys)
    model.multi_level_inputs = lambda images, padding_mask: (feats, masks, pos_embeds)
    with torch.no_grad():
        outputs = model.forward_outputs(None, None, None)

    # Reference points and proposals are float32 in both codebases (as in detrex), hence
    # the tolerance.
    tolerance = dict(rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(outputs["pred_logits"], expected.logits, **tolerance)
    torch.testing.assert_close(outputs["pred_boxes"], expected.pred_boxes, **tolerance)
    assert outputs["pred_logits"].shape == (2, num_queries, num_classes)
    if as_two_stage:
        torch.testing.assert_close(
            outputs["enc_outputs"]["pred_logits"], expected.enc_outputs_class, **tolerance
        )
        torch.testing.assert_close(
            outputs["enc_outputs"]["pred_boxes"],
            expected.enc_outputs_coord_logits.sigmoid(),
            **tolerance,
        )
