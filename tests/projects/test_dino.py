"""DINO project: configs, detrex parameter names and checkpoint conversion, proposal geometry,
the denoising mask inside the decoder, look-forward-twice gradients, training losses (with and
without denoising), inference."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from detectron2.config import LazyConfig, instantiate
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.structures import Boxes, Instances

import projects.dino.checkpoint  # noqa: F401  (registers the converter)
from detr_ext.checkpoint import get_converter
from detr_ext.layers import (
    DINOTransformer,
    DINOTransformerDecoder,
    DINOTransformerEncoder,
    gen_encoder_output_proposals,
    get_encoder_reference_points,
    prepare_for_cdn,
)
from detr_ext.modeling import DINOCriterion, DINODetectorBase
from projects.dino.modeling import DINO

from .key_lists import read_key_list, share_decoder_heads, synthetic_state_dict

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = REPO_ROOT / "projects" / "dino" / "configs"
KEYS_FILE = "detrex_dino_r50_4scale.txt"


def load_config(name: str):
    return LazyConfig.load(str(CONFIG_DIR / name))


def tiny_model(num_queries: int = 12, dn_number: int = 6) -> DINO:
    """The shapes config shrunk further: width 32, 1 encoder + 2 decoder layers."""
    model = load_config("dino_shapes.py").model
    model.neck.out_channels = 32
    model.neck.norm_layer.num_groups = 8
    model.neck.norm_layer.num_channels = 32
    model.position_embedding.num_pos_feats = 16
    for part, num_layers in ((model.transformer.encoder, 1), (model.transformer.decoder, 2)):
        part.update(embed_dim=32, num_heads=4, feedforward_dim=64, num_layers=num_layers)
    model.embed_dim = 32
    model.num_queries = num_queries
    model.select_box_nums_for_evaluation = 10
    model.dn_number = dn_number
    return instantiate(model)


def tiny_batch(num_objects=(2, 1)) -> list[dict]:
    """Images of different sizes (so the batch is padded) with the given object counts."""
    generator = torch.Generator().manual_seed(1)
    sizes = [(64, 96), (96, 64), (64, 64)]
    batch = []
    for (height, width), count in zip(sizes, num_objects, strict=False):
        instances = Instances((height, width))
        top_left = torch.rand(count, 2, generator=generator) * 30
        size = 8 + torch.rand(count, 2, generator=generator) * 24
        instances.gt_boxes = Boxes(torch.cat([top_left, top_left + size], 1))
        instances.gt_classes = torch.randint(0, 3, (count,), generator=generator)
        image = torch.randint(0, 256, (3, height, width), generator=generator, dtype=torch.uint8)
        batch.append({"image": image, "instances": instances, "height": 2 * height})
    return batch


# ---------------------------------------------------------------------------- configs


def test_registered():
    assert META_ARCH_REGISTRY.get("DINO") is DINO


def test_network_is_shared_and_old_names_still_resolve():
    """DINO's network lives in detr_ext (Align-DETR builds on it; a project never imports
    another): ``DINO`` is the registered subclass of the unregistered ``DINODetectorBase``, and
    the transformer names that configs and saved ``config.yaml`` files use (detectron2 saves
    the shortest importable path, ``projects.dino.DINOTransformer`` before the move) still
    build the same classes."""
    import projects.dino
    import projects.dino.modeling

    assert DINO.__bases__ == (DINODetectorBase,)
    assert "DINODetectorBase" not in META_ARCH_REGISTRY
    for cls in (DINOTransformer, DINOTransformerEncoder, DINOTransformerDecoder):
        assert cls.__module__.startswith("detr_ext.layers.")
        assert getattr(projects.dino.modeling, cls.__name__) is cls
        assert getattr(projects.dino, cls.__name__) is cls
    layer = {"embed_dim": 32, "num_heads": 4, "feedforward_dim": 64, "num_layers": 1}
    transformer = instantiate(
        {
            "_target_": "projects.dino.DINOTransformer",
            "encoder": {"_target_": "projects.dino.DINOTransformerEncoder", **layer},
            "decoder": {"_target_": "projects.dino.modeling.DINOTransformerDecoder", **layer},
            "two_stage_num_proposals": 10,
        }
    )
    assert type(transformer) is DINOTransformer
    assert type(transformer.encoder) is DINOTransformerEncoder
    assert type(transformer.decoder) is DINOTransformerDecoder


def test_criterion_is_shared_and_old_paths_still_resolve():
    """DINOCriterion lives in detr_ext (Align-DETR uses it too); configs and saved
    ``config.yaml`` files that name the project's paths still build it."""
    import projects.dino.modeling

    assert projects.dino.modeling.DINOCriterion is DINOCriterion
    assert DINOCriterion.__module__ == "detr_ext.modeling.criterions.dn_criterion"
    criterion = instantiate(
        {
            "_target_": "projects.dino.modeling.dn_criterion.DINOCriterion",
            "num_classes": 3,
            "matcher": {"_target_": "detr_ext.modeling.HungarianMatcher"},
            "weight_dict": {"loss_class": 1.0, "loss_bbox": 5.0, "loss_giou": 2.0},
        }
    )
    assert type(criterion) is DINOCriterion


@pytest.mark.parametrize(
    "name, levels, max_iter, milestones",
    [
        ("dino_r50_4scale_12ep.py", 4, 90000, [82500, 90000]),
        ("dino_r50_4scale_24ep.py", 4, 180000, [150000, 180000]),
        ("dino_r50_5scale_12ep.py", 5, 90000, [82500, 90000]),
        ("dino_r50_5scale_24ep.py", 5, 180000, [150000, 180000]),
        ("dino_timm_convnext_tiny_4scale_12ep.py", 4, 90000, [82500, 90000]),
    ],
)
def test_coco_configs(name, levels, max_iter, milestones):
    cfg = load_config(name)
    model = cfg.model
    assert model.num_queries == 900 and model.transformer.two_stage_num_proposals == 900
    assert (model.dn_number, model.label_noise_ratio, model.box_noise_scale) == (100, 0.5, 1.0)
    assert model.select_box_nums_for_evaluation == 300
    matcher = model.criterion.matcher
    assert (matcher.cost_class, matcher.cost_bbox, matcher.cost_giou) == (2.0, 5.0, 2.0)
    weights = model.criterion.weight_dict
    assert (weights["loss_class"], weights["loss_bbox"], weights["loss_giou"]) == (1, 5, 2)
    assert (weights["loss_class_dn"], weights["loss_bbox_dn"], weights["loss_giou_dn"]) == (1, 5, 2)
    assert model.transformer.num_feature_levels == levels
    assert model.neck.num_outs == levels and len(model.neck.in_features) == levels - 1
    assert cfg.train.max_iter == max_iter
    assert cfg.lr_multiplier.scheduler.milestones == milestones
    assert cfg.optimizer.lr == 1e-4 and cfg.optimizer.weight_decay == 1e-4
    assert cfg.optimizer.params.lr_factor_func("backbone.res2.0.conv1.weight") == 0.1
    assert cfg.optimizer.params.lr_factor_func("transformer.level_embeds") == 1
    assert cfg.train.clip_grad.enabled and cfg.train.clip_grad.params.max_norm == 0.1
    assert cfg.dataloader.train.dataset.names == "coco_2017_train"
    expected_init = "" if "timm" in name else "detectron2://ImageNetPretrained/torchvision/R-50.pkl"
    assert cfg.train.init_checkpoint == expected_init


def test_5scale_model_and_timm_backbone_shapes():
    model_cfg = load_config("dino_r50_5scale_12ep.py").model
    assert list(model_cfg.backbone.out_features) == ["res2", "res3", "res4", "res5"]
    assert list(model_cfg.neck.in_features) == list(model_cfg.backbone.out_features)
    neck, transformer = instantiate(model_cfg.neck), instantiate(model_cfg.transformer)
    assert len(neck.convs) == 4 and len(neck.extra_convs) == 1
    assert transformer.level_embeds.shape == (5, 256)
    assert transformer.encoder.layers[0].attentions[0].num_levels == 5
    assert transformer.decoder.layers[0].attentions[1].num_levels == 5

    cfg = load_config("dino_timm_convnext_tiny_4scale_12ep.py")
    backbone = instantiate(cfg.model.backbone)
    assert backbone.output_shape().keys() == cfg.model.neck.input_shapes.keys()
    for name, shape in backbone.output_shape().items():
        assert shape.channels == cfg.model.neck.input_shapes[name].channels
        assert shape.stride == cfg.model.neck.input_shapes[name].stride


def test_shapes_config_is_small_and_on_cpu():
    cfg = load_config("dino_shapes.py")
    assert cfg.train.device == "cpu"
    assert cfg.dataloader.train.dataset.names == "shapes_train"
    model = instantiate(cfg.model)
    assert model.num_classes == 3 and model.num_queries == 100
    assert model.transformer.encoder.num_layers == 2 and model.transformer.decoder.num_layers == 3
    assert model.transformer.level_embeds.shape == (3, 128)
    assert model.denoising.dn_number == 30


# ---------------------------------------------------------------------------- checkpoints


@pytest.fixture(scope="module")
def dino_r50():
    return instantiate(LazyConfig.load(str(CONFIG_DIR / "models" / "dino_r50.py")).model)


def test_names_and_shapes_equal_detrex(dino_r50):
    expected = read_key_list(KEYS_FILE)
    assert len(expected) == 634
    ours = {key: tuple(value.shape) for key, value in dino_r50.state_dict().items()}
    assert ours == expected


def test_detrex_conversion_loads_strictly(dino_r50):
    source = share_decoder_heads(synthetic_state_dict(read_key_list(KEYS_FILE)))
    # BatchNorm step counters, as saved by backbones with BatchNorm, are dropped and reported.
    counters = [
        "backbone.stem.conv1.norm.num_batches_tracked",
        "neck.convs.0.norm.num_batches_tracked",
    ]
    source.update({key: torch.tensor(7) for key in counters})
    converted, report = get_converter("dino.detrex").convert(source, dino_r50.state_dict())
    assert report.ok, report.summary()
    assert sorted(report.dropped_source_keys) == counters
    assert not any(key.endswith("num_batches_tracked") for key in converted)
    result = dino_r50.load_state_dict(converted, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    state = dino_r50.state_dict()
    for key in ("label_enc.weight", "transformer.tgt_embed.weight", "class_embed.6.bias"):
        assert torch.equal(state[key], source[key])
    assert dino_r50.transformer.decoder.bbox_embed[6] is dino_r50.bbox_embed[6]


# ---------------------------------------------------------------------------- geometry


def test_encoder_proposals_and_reference_points():
    # One 2x4 level; image 1 has its last two columns padded.
    mask = torch.zeros(2, 2, 4, dtype=torch.bool)
    mask[1, :, 2:] = True
    spatial_shapes = torch.tensor([[2, 4]])
    memory = torch.ones(2, 8, 3)
    output_memory, proposals = gen_encoder_output_proposals(memory, mask.flatten(1), spatial_shapes)
    boxes = proposals.sigmoid()
    # Image 0, pixel (row 1, col 2): centre ((2 + .5) / 4, (1 + .5) / 2), size 0.05.
    torch.testing.assert_close(boxes[0, 6], torch.tensor([0.625, 0.75, 0.05, 0.05]))
    # Image 1 normalizes by its 2 valid columns; padded tokens are invalid (+inf, zeroed).
    torch.testing.assert_close(boxes[1, 1], torch.tensor([0.75, 0.25, 0.05, 0.05]))
    assert torch.isinf(proposals[1, 2]).all() and (output_memory[1, 2] == 0).all()
    assert (output_memory[0] == 1).all()

    valid_ratios = torch.tensor([[[1.0, 1.0]], [[0.5, 1.0]]])
    points = get_encoder_reference_points(spatial_shapes, valid_ratios)
    assert points.shape == (2, 8, 1, 2)
    torch.testing.assert_close(points[0, 6, 0], torch.tensor([0.625, 0.75]))
    # Normalized by the valid width, then scaled back by the valid ratio of the level.
    torch.testing.assert_close(points[1, 1, 0], torch.tensor([0.375, 0.25]))


def test_matching_queries_do_not_see_denoising_queries():
    """With the CDN mask, the matching part (and every other group) is unchanged by the
    content of a denoising group, and equals the output without denoising queries."""
    model = tiny_model().eval()
    batch = tiny_batch()
    images, padding_mask = model.preprocess_image(batch)
    targets = model.prepare_targets(batch)
    feats, masks, pos_embeds = model.multi_level_inputs(images, padding_mask)
    dn = prepare_for_cdn(targets, model.label_enc, model.num_queries, 3, dn_number=4)
    pad_size, groups = dn.dn_meta["pad_size"], dn.dn_meta["num_dn_group"]
    assert groups == 2
    with torch.no_grad():
        plain = model.transformer(feats, masks, pos_embeds)
        with_dn = model.transformer(feats, masks, pos_embeds, *dn[:3])
        label = dn.query_label.clone()
        label[:, : pad_size // groups] += 1.0  # change group 0 only
        changed = model.transformer(feats, masks, pos_embeds, label, dn.query_bbox, dn.attn_mask)
    torch.testing.assert_close(with_dn[0][:, :, pad_size:], plain[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(with_dn[2][:, :, pad_size:], plain[2], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(
        changed[0][:, :, pad_size // groups :], with_dn[0][:, :, pad_size // groups :]
    )
    assert not torch.allclose(
        changed[0][:, :, : pad_size // groups], with_dn[0][:, :, : pad_size // groups]
    )


# ---------------------------------------------------------------------------- training


def test_train_losses_and_backward():
    model = tiny_model().train()
    losses = model(tiny_batch())
    expected = set()
    for base in ("loss_class", "loss_bbox", "loss_giou"):
        expected |= {base, f"{base}_0", f"{base}_enc", f"{base}_dn", f"{base}_dn_0"}
    assert set(losses) == expected
    for key, value in losses.items():
        assert value.dim() == 0 and torch.isfinite(value), key
    assert losses["loss_bbox_dn"] > 0 and losses["loss_class_dn_0"] > 0
    sum(losses.values()).backward()
    for name in (
        "label_enc.weight",
        "transformer.tgt_embed.weight",
        "transformer.enc_output.weight",
        "class_embed.2.weight",  # the encoder proposal head
        "bbox_embed.2.layers.2.weight",
        "bbox_embed.0.layers.2.weight",
        "transformer.decoder.ref_point_head.layers.0.weight",
        "backbone.res3.0.conv1.weight",
    ):
        grad = model.get_parameter(name).grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_look_forward_twice_trains_previous_box_head():
    """The last layer's boxes are refined from the previous layer's (undetached) boxes."""
    model = tiny_model().train()
    outputs = model.forward_outputs(
        *model.preprocess_image(tiny_batch()), model.prepare_targets(tiny_batch())
    )
    model.zero_grad()
    outputs["pred_boxes"].sum().backward()
    assert model.bbox_embed[0].layers[2].weight.grad.abs().sum() > 0
    model.transformer.decoder.look_forward_twice = False
    model.zero_grad()
    outputs = model.forward_outputs(
        *model.preprocess_image(tiny_batch()), model.prepare_targets(tiny_batch())
    )
    outputs["pred_boxes"].sum().backward()
    assert model.bbox_embed[0].layers[2].weight.grad is None or (
        model.bbox_embed[0].layers[2].weight.grad.abs().sum() == 0
    )


def test_dn_losses_zero_without_targets():
    model = tiny_model().train()
    losses = model(tiny_batch(num_objects=(0, 0)))
    for base in ("loss_class", "loss_bbox", "loss_giou"):
        assert losses[f"{base}_dn"] == 0 and losses[f"{base}_dn_0"] == 0
    assert all(torch.isfinite(value) for value in losses.values())
    sum(losses.values()).backward()


def test_dn_loss_normalization():
    """Denoising losses use the fixed assignment and divide by num_boxes * num_dn_group."""
    criterion = instantiate(load_config("dino_shapes.py").model.criterion)
    assert isinstance(criterion, DINOCriterion)
    targets = [
        {"labels": torch.tensor([0, 2]), "boxes": torch.tensor([[0.3, 0.3, 0.2, 0.2]] * 2)},
        {"labels": torch.tensor([1]), "boxes": torch.tensor([[0.6, 0.5, 0.1, 0.3]])},
    ]
    groups, group_size = 3, 4
    dn_boxes = torch.full((2, groups * group_size, 4), 0.5)
    for image, target in enumerate(targets):
        for g in range(groups):
            for j, box in enumerate(target["boxes"]):
                dn_boxes[image, g * group_size + j] = box + 0.01
    outputs = {
        "pred_logits": torch.zeros(2, 5, 3),
        "pred_boxes": torch.rand(2, 5, 4) * 0.5 + 0.25,
        "dn_outputs": {"pred_logits": torch.zeros(2, 12, 3), "pred_boxes": dn_boxes},
        "dn_meta": {"pad_size": 12, "num_dn_group": groups},
    }
    losses = criterion(outputs, targets)
    # Each positive is off by 0.01 in 4 coordinates; mean over the 3 boxes x 3 groups.
    torch.testing.assert_close(losses["loss_bbox_dn"], torch.tensor(0.04 * 5.0))


# ---------------------------------------------------------------------------- inference


def test_inference():
    model = tiny_model().eval()
    batch = tiny_batch()
    with torch.no_grad():
        results = model(batch)
    assert len(results) == 2
    for item, result in zip(batch, results, strict=True):
        instances = result["instances"]
        assert len(instances) == 10
        assert instances.image_size == (item["height"], item["image"].shape[2])
        assert instances.scores.min() >= 0 and instances.scores.max() <= 1
        assert torch.all(instances.scores[:-1] >= instances.scores[1:])
        assert instances.pred_classes.max() < 3
        assert torch.isfinite(instances.pred_boxes.tensor).all()
