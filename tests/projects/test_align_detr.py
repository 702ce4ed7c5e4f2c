"""Align-DETR project: configs, detrex parameter names and checkpoint conversion, the match
number and prime-sample weights of each layer, the criterion's losses against hand-written
ones, training (losses, backward) and inference."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from detectron2.config import LazyConfig, instantiate
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.structures import Boxes, Instances

import projects.align_detr.checkpoint  # noqa: F401  (registers the converter)
from detr_ext.checkpoint import get_converter
from detr_ext.layers import box_cxcywh_to_xyxy, matched_box_iou, matched_generalized_box_iou
from detr_ext.modeling import DINODetectorBase, HungarianMatcher, ManyToOneMatcher
from detr_ext.modeling.losses import ia_bce_loss
from projects.align_detr.modeling import AlignDETR, AlignDETRCriterion

from .key_lists import read_key_list, share_decoder_heads, synthetic_state_dict

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = REPO_ROOT / "projects" / "align_detr" / "configs"
KEYS_FILE = "detrex_align_detr_r50_4scale.txt"
WEIGHTS = {"loss_class": 1.0, "loss_bbox": 5.0, "loss_giou": 2.0}


def load_config(name: str):
    return LazyConfig.load(str(CONFIG_DIR / name))


def tiny_model(match_num=(3, 2, 1), num_queries: int = 12, dn_number: int = 6) -> AlignDETR:
    """The shapes config shrunk further: width 32, 1 encoder + 2 decoder layers."""
    model = load_config("align_detr_shapes.py").model
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
    model.criterion.match_num = list(match_num)
    return instantiate(model)


def tiny_batch(num_objects=(2, 1)) -> list[dict]:
    """Images of different sizes (so the batch is padded) with the given object counts."""
    generator = torch.Generator().manual_seed(1)
    sizes = [(64, 96), (96, 64)]
    batch = []
    for (height, width), count in zip(sizes, num_objects, strict=True):
        instances = Instances((height, width))
        top_left = torch.rand(count, 2, generator=generator) * 30
        size = 8 + torch.rand(count, 2, generator=generator) * 24
        instances.gt_boxes = Boxes(torch.cat([top_left, top_left + size], 1))
        instances.gt_classes = torch.randint(0, 3, (count,), generator=generator)
        image = torch.randint(0, 256, (3, height, width), generator=generator, dtype=torch.uint8)
        batch.append({"image": image, "instances": instances, "height": 2 * height})
    return batch


def make_criterion(match_num=(2, 2, 1), tau=1.5) -> AlignDETRCriterion:
    return AlignDETRCriterion(
        num_classes=3,
        # Few queries in these tests: k lowered only where they do not suffice.
        matcher=ManyToOneMatcher(
            cost_class=2.0, cost_bbox=5.0, cost_giou=2.0, max_positive_fraction=1.0
        ),
        weight_dict=WEIGHTS,
        match_num=match_num,
        tau=tau,
    )


# ---------------------------------------------------------------------------- configs


def test_registered():
    assert META_ARCH_REGISTRY.get("AlignDETR") is AlignDETR
    # DINO's network, from detr_ext: the project does not depend on projects/dino.
    assert AlignDETR.__bases__ == (DINODetectorBase,)


@pytest.mark.parametrize(
    "name, max_iter, milestones",
    [
        ("aligndetr_k2_r50_4scale_12ep.py", 90000, [82500, 90000]),
        ("aligndetr_k2_r50_4scale_24ep.py", 180000, [150000, 180000]),
    ],
)
def test_coco_configs(name, max_iter, milestones):
    cfg = load_config(name)
    model = cfg.model
    assert model._target_ is AlignDETR
    assert model.num_queries == 900 and model.transformer.two_stage_num_proposals == 900
    assert model.num_classes == 80 and model.transformer.num_feature_levels == 4
    assert (model.dn_number, model.label_noise_ratio, model.box_noise_scale) == (100, 0.5, 1.0)
    criterion = model.criterion
    assert criterion._target_ is AlignDETRCriterion
    assert list(criterion.match_num) == [2, 2, 2, 2, 2, 2, 1]
    assert (criterion.tau, criterion.alpha, criterion.gamma) == (1.5, 0.25, 2.0)
    matcher = criterion.matcher
    assert matcher._target_ is ManyToOneMatcher
    assert (matcher.cost_class, matcher.cost_bbox, matcher.cost_giou) == (2.0, 5.0, 2.0)
    assert matcher.cost_class_type == "focal_loss_cost"
    assert (matcher.alpha, matcher.gamma) == (0.25, 2.0)
    weights = criterion.weight_dict
    assert (weights["loss_class"], weights["loss_bbox"], weights["loss_giou"]) == (1, 5, 2)
    assert (weights["loss_class_dn"], weights["loss_bbox_dn"], weights["loss_giou_dn"]) == (1, 5, 2)
    assert cfg.train.max_iter == max_iter
    assert cfg.lr_multiplier.scheduler.milestones == milestones
    assert cfg.optimizer.lr == 1e-4 and cfg.optimizer.weight_decay == 1e-4
    assert cfg.optimizer.params.lr_factor_func("backbone.res2.0.conv1.weight") == 0.1
    assert cfg.optimizer.params.lr_factor_func("transformer.level_embeds") == 1
    assert cfg.train.clip_grad.enabled and cfg.train.clip_grad.params.max_norm == 0.1
    assert cfg.dataloader.train.total_batch_size == 16
    assert cfg.dataloader.train.dataset.names == "coco_2017_train"
    assert cfg.train.init_checkpoint == "detectron2://ImageNetPretrained/torchvision/R-50.pkl"


def test_shapes_config_is_small_and_on_cpu():
    cfg = load_config("align_detr_shapes.py")
    assert cfg.train.device == "cpu"
    assert cfg.dataloader.train.dataset.names == "shapes_train"
    model = instantiate(cfg.model)
    assert isinstance(model, AlignDETR) and isinstance(model.criterion, AlignDETRCriterion)
    assert model.num_classes == 3 and model.num_queries == 100
    assert model.transformer.decoder.num_layers == 3
    assert model.criterion.match_num == (2, 2, 2, 1)
    assert model.criterion.num_classes == 3


def test_match_num_must_fit_the_decoder():
    with pytest.raises(ValueError, match="match_num needs 3 entries"):
        tiny_model(match_num=(2, 2, 2, 1))
    with pytest.raises(ValueError, match="match_num"):
        make_criterion(match_num=(2, 0, 1))
    with pytest.raises(TypeError, match="ManyToOneMatcher"):
        AlignDETRCriterion(3, HungarianMatcher(), WEIGHTS)


# ---------------------------------------------------------------------------- checkpoints


@pytest.fixture(scope="module")
def align_detr_r50():
    return instantiate(load_config("models/align_detr_r50.py").model)


def test_names_and_shapes_equal_detrex(align_detr_r50):
    expected = read_key_list(KEYS_FILE)
    assert len(expected) == 634
    ours = {key: tuple(value.shape) for key, value in align_detr_r50.state_dict().items()}
    assert ours == expected


def test_detrex_conversion_loads_strictly(align_detr_r50):
    source = share_decoder_heads(synthetic_state_dict(read_key_list(KEYS_FILE)))
    source["backbone.res2.0.conv1.norm.num_batches_tracked"] = torch.tensor(0)
    converted, report = get_converter("align_detr.detrex").convert(
        source, align_detr_r50.state_dict()
    )
    assert report.ok, report.summary()
    assert report.dropped_source_keys == ["backbone.res2.0.conv1.norm.num_batches_tracked"]
    result = align_detr_r50.load_state_dict(converted, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    state = align_detr_r50.state_dict()
    assert state.keys() == read_key_list(KEYS_FILE).keys()
    for key, value in state.items():
        assert value.shape == source[key].shape, key
    for key in ("label_enc.weight", "transformer.tgt_embed.weight", "class_embed.6.bias"):
        assert torch.equal(state[key], source[key])


# ---------------------------------------------------------------------------- criterion


def two_targets():
    return [
        {
            "labels": torch.tensor([0, 2]),
            "boxes": torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.7, 0.6, 0.3, 0.2]]),
        },
        {"labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.4, 0.4]])},
    ]


def random_layer(num_queries=6, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return {
        "pred_logits": torch.randn(2, num_queries, 3, generator=generator),
        "pred_boxes": torch.rand(2, num_queries, 4, generator=generator) * 0.4 + 0.2,
    }


def test_match_number_and_weights_of_each_layer():
    """[encoder, aux 0, aux 1, last] = [4, 3, 2, 1]: each layer's matcher call gets its k and
    its weight row; without aux outputs the last layer still uses the last entry."""
    criterion = make_criterion(match_num=(4, 3, 2, 1), tau=2.0)
    torch.testing.assert_close(
        criterion.weight_table[2], torch.tensor([1.0, math.exp(-0.5), 0.0, 0.0])
    )
    assert "weight_table" not in criterion.state_dict()
    calls = []
    matcher_forward = criterion.matcher.forward

    def spy(outputs, targets, match_number=1):
        calls.append(match_number)
        return matcher_forward(outputs, targets, match_number=match_number)

    criterion.matcher.forward = spy
    outputs = random_layer(num_queries=8)
    outputs["aux_outputs"] = [random_layer(8, seed=1), random_layer(8, seed=2)]
    outputs["enc_outputs"] = random_layer(8, seed=3)
    criterion(outputs, two_targets())
    assert calls == [1, 3, 2, 4]  # last layer, aux 0, aux 1, encoder

    calls.clear()
    criterion({**random_layer(8)}, two_targets())
    assert calls == [1]
    with pytest.raises(ValueError, match="match_num has 4 entries, expected 3"):
        criterion({**random_layer(8), "aux_outputs": [random_layer(8)]}, two_targets())


def test_layer_losses_match_hand_written_ones():
    """One k = 2 layer: IA-BCE with prime-sample weights, box losses weighted by the same."""
    criterion = make_criterion(match_num=(2, 2, 1), tau=1.5)
    outputs, targets = random_layer(num_queries=6), two_targets()
    indices = criterion.matcher(outputs, targets, match_number=2)
    losses = criterion.layer_losses(outputs, targets, 3.0, layer_index=0)  # aux 0: k = 2

    batch_index = torch.cat([torch.full_like(q, i) for i, (q, _) in enumerate(indices)])
    query_index = torch.cat([q for q, _ in indices])
    labels = torch.cat([t["labels"][j] for t, (_, j) in zip(targets, indices, strict=True)])
    target_boxes = torch.cat([t["boxes"][j] for t, (_, j) in zip(targets, indices, strict=True)])
    groups = torch.cat([indices[0][1], indices[1][1] + 2])
    pred_boxes = outputs["pred_boxes"][batch_index, query_index]
    pred_xyxy, target_xyxy = box_cxcywh_to_xyxy(pred_boxes), box_cxcywh_to_xyxy(target_boxes)
    ious = matched_box_iou(pred_xyxy, target_xyxy)

    # Hand-written ranks: the two matches of each target, by p ** 0.25 * IoU ** 0.75.
    scores = outputs["pred_logits"][batch_index, query_index, labels].sigmoid()
    quality = (scores**0.25 * ious**0.75).clamp(min=0.01)
    weights = torch.ones(len(groups))
    for group in groups.unique():
        members = (groups == group).nonzero().flatten()
        assert len(members) == 2
        worse = members[quality[members].argmin()]
        weights[worse] = math.exp(-1 / 1.5)

    expected_class, _ = ia_bce_loss(
        outputs["pred_logits"], batch_index, query_index, labels, ious, 3.0,
        groups=groups, rank_weights=torch.tensor([1.0, math.exp(-1 / 1.5)]),
    )  # fmt: skip
    torch.testing.assert_close(losses["loss_class"], expected_class)
    l1 = (pred_boxes - target_boxes).abs().sum(1)
    torch.testing.assert_close(losses["loss_bbox"], (weights * l1).sum() / 3.0)
    giou = matched_generalized_box_iou(pred_xyxy, target_xyxy)
    torch.testing.assert_close(losses["loss_giou"], (weights * (1 - giou)).sum() / 3.0)

    # The one-to-one last layer: every weight is 1, the box losses are DINO's.
    last = criterion.layer_losses(outputs, targets, 3.0, layer_index=None)  # encoder: k = 2
    torch.testing.assert_close(last["loss_bbox"], losses["loss_bbox"])
    criterion._num_aux_layers = 1
    one_to_one = criterion.layer_losses(outputs, targets, 3.0, layer_index=1)
    indices = criterion.matcher(outputs, targets, match_number=1)
    batch_index = torch.cat([torch.full_like(q, i) for i, (q, _) in enumerate(indices)])
    query_index = torch.cat([q for q, _ in indices])
    target_boxes = torch.cat([t["boxes"][j] for t, (_, j) in zip(targets, indices, strict=True)])
    l1 = (outputs["pred_boxes"][batch_index, query_index] - target_boxes).abs().sum()
    torch.testing.assert_close(one_to_one["loss_bbox"], l1 / 3.0)


def test_denoising_losses_use_ia_bce_without_rank_weights():
    criterion = make_criterion()
    targets = two_targets()
    groups, group_size = 2, 4
    generator = torch.Generator().manual_seed(5)
    dn_logits = torch.randn(2, groups * group_size, 3, generator=generator)
    dn_boxes = torch.full((2, groups * group_size, 4), 0.5)
    query_index, target_index, batch_index = [], [], []
    for image, target in enumerate(targets):
        for g in range(groups):
            for j, box in enumerate(target["boxes"]):
                dn_boxes[image, g * group_size + j] = box + 0.01
                query_index.append(g * group_size + j)
                target_index.append(j)
                batch_index.append(image)
    outputs = {
        **random_layer(num_queries=6),
        "dn_outputs": {"pred_logits": dn_logits, "pred_boxes": dn_boxes},
        "dn_meta": {"pad_size": groups * group_size, "num_dn_group": groups},
    }
    losses = criterion(outputs, targets)
    # Each positive is off by 0.01 in 4 coordinates, weight 1; mean over 3 boxes x 2 groups.
    torch.testing.assert_close(losses["loss_bbox_dn"], torch.tensor(0.04 * 5.0))
    batch_index, query_index = torch.tensor(batch_index), torch.tensor(query_index)
    labels = torch.cat([targets[b]["labels"][j : j + 1] for b, j in zip(batch_index, target_index)])
    target_boxes = torch.stack([targets[b]["boxes"][j] for b, j in zip(batch_index, target_index)])
    ious = matched_box_iou(
        box_cxcywh_to_xyxy(dn_boxes[batch_index, query_index]), box_cxcywh_to_xyxy(target_boxes)
    )
    expected, _ = ia_bce_loss(dn_logits, batch_index, query_index, labels, ious, 3.0 * groups)
    torch.testing.assert_close(losses["loss_class_dn"], expected)


# ---------------------------------------------------------------------------- model


def test_train_losses_backward_and_match_numbers():
    model = tiny_model(match_num=(3, 2, 1)).train()
    calls = []
    matcher_forward = model.criterion.matcher.forward

    def spy(outputs, targets, match_number=1):
        calls.append(match_number)
        return matcher_forward(outputs, targets, match_number=match_number)

    model.criterion.matcher.forward = spy
    losses = model(tiny_batch())
    assert calls == [1, 2, 3]  # last decoder layer, decoder layer 0, encoder proposals
    expected = set()
    for base in ("loss_class", "loss_bbox", "loss_giou"):
        expected |= {base, f"{base}_0", f"{base}_enc", f"{base}_dn", f"{base}_dn_0"}
    assert set(losses) == expected
    for key, value in losses.items():
        assert value.dim() == 0 and torch.isfinite(value), key
    assert losses["loss_class_enc"] > 0 and losses["loss_bbox_dn"] > 0
    sum(losses.values()).backward()
    for name in (
        "label_enc.weight",
        "transformer.tgt_embed.weight",
        "class_embed.2.weight",  # the encoder proposal head
        "bbox_embed.0.layers.2.weight",
        "backbone.res3.0.conv1.weight",
    ):
        grad = model.get_parameter(name).grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_train_without_targets():
    model = tiny_model().train()
    losses = model(tiny_batch(num_objects=(0, 0)))
    assert all(torch.isfinite(value) for value in losses.values())
    assert losses["loss_bbox"] == 0 and losses["loss_class"] > 0
    sum(losses.values()).backward()


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
        assert torch.all(instances.scores[:-1] >= instances.scores[1:])
        assert instances.pred_classes.max() < 3
        assert torch.isfinite(instances.pred_boxes.tensor).all()
