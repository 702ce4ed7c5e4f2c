"""Deformable DETR project: configs, training and inference forward of the three variants,
backend parity, and detrex checkpoint names (geometry and the parity with transformers' port
of the original are in their own files)."""

from __future__ import annotations

import pytest
import torch
from detectron2.config import instantiate
from detectron2.modeling import META_ARCH_REGISTRY
from omegaconf import OmegaConf

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

from .deformable_detr_tiny import (
    R50_CONFIGS,
    VARIANTS,
    load_config,
    tiny_batch,
    tiny_model,
    tiny_model_config,
)
from .key_lists import read_key_list, synthetic_state_dict

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
