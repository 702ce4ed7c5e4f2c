"""Contrastive denoising queries: layout, attention mask, noise statistics, edge cases."""

import pytest
import torch
from torch import nn

from detr_ext.layers import (
    CdnQueryGenerator,
    box_cxcywh_to_xyxy,
    build_dn_attn_mask,
    denoising_indices,
    dn_post_process,
    inverse_sigmoid,
    keep_parameters_in_graph,
    num_denoising_groups,
    prepare_for_cdn,
)


def make_targets(counts, num_classes=5, dtype=torch.float32, generator_seed=0):
    """Targets with boxes well inside the image (no clamping for the noise in these tests)."""
    generator = torch.Generator().manual_seed(generator_seed)
    targets = []
    for count in counts:
        centers = 0.45 + 0.1 * torch.rand(count, 2, generator=generator, dtype=dtype)
        sizes = 0.05 + 0.1 * torch.rand(count, 2, generator=generator, dtype=dtype)
        labels = torch.randint(0, num_classes, (count,), generator=generator)
        targets.append({"labels": labels, "boxes": torch.cat([centers, sizes], -1)})
    return targets


def one_hot_embedding(num_classes):
    """An embedding whose rows are one-hot, so a query's label is its argmax."""
    embedding = nn.Embedding(num_classes, num_classes)
    with torch.no_grad():
        embedding.weight.copy_(torch.eye(num_classes))
    return embedding


def reference_attn_mask(num_groups, group_size, num_queries):
    """detrex's loop, written out: True = blocked."""
    pad_size = num_groups * group_size
    size = pad_size + num_queries
    mask = torch.zeros(size, size, dtype=torch.bool)
    for row in range(size):
        for col in range(size):
            if row >= pad_size:
                mask[row, col] = col < pad_size
            elif col < pad_size:
                mask[row, col] = row // group_size != col // group_size
    return mask


def test_num_groups_follows_detrex():
    assert num_denoising_groups(100, 30) == 3
    assert num_denoising_groups(100, 7) == 14
    assert num_denoising_groups(100, 150) == 1  # at least one group
    with pytest.raises(ValueError, match="max_num_targets"):
        num_denoising_groups(100, 0)


def test_layout_positives_then_negatives_and_padding():
    num_classes = 5
    targets = make_targets([2, 3, 0], num_classes)
    label_enc = one_hot_embedding(num_classes)
    dn = prepare_for_cdn(
        targets, label_enc, num_queries=7, num_classes=num_classes, dn_number=10,
        label_noise_ratio=0.0, box_noise_scale=0.0,
    )  # fmt: skip
    max_targets, groups = 3, 10 // 3
    pad_size = 2 * max_targets * groups
    assert dn.dn_meta == {"pad_size": pad_size, "num_dn_group": groups}
    assert dn.query_label.shape == (3, pad_size, num_classes)
    assert dn.query_bbox.shape == (3, pad_size, 4)
    assert dn.attn_mask.shape == (pad_size + 7, pad_size + 7)

    for image, target in enumerate(targets):
        filled = torch.zeros(pad_size, dtype=torch.bool)
        for group in range(groups):
            for half in range(2):  # 0: positives, 1: negatives
                for j in range(len(target["labels"])):
                    slot = 2 * max_targets * group + half * max_targets + j
                    filled[slot] = True
                    torch.testing.assert_close(
                        dn.query_bbox[image, slot], inverse_sigmoid(target["boxes"][j])
                    )
                    assert dn.query_label[image, slot].argmax() == target["labels"][j]
        # Padding slots (and every slot of the image without targets) hold zeros.
        assert torch.all(dn.query_label[image, ~filled] == 0)
        assert torch.all(dn.query_bbox[image, ~filled] == 0)


def test_attn_mask_structure_exact():
    for groups, group_size, num_queries in ((1, 2, 3), (3, 4, 5), (4, 6, 2)):
        mask = build_dn_attn_mask(groups, group_size, num_queries)
        assert torch.equal(mask, reference_attn_mask(groups, group_size, num_queries))
        pad_size = groups * group_size
        assert mask[pad_size:, :pad_size].all()  # matching queries can't see dn queries
        assert not mask[pad_size:, pad_size:].any()  # matching queries see each other
        assert not mask[:pad_size, pad_size:].any()  # dn queries see the matching queries
        for g in range(groups):
            rows = slice(g * group_size, (g + 1) * group_size)
            assert not mask[rows, rows].any()  # within a group: visible
            blocked_per_row = mask[rows, :pad_size].sum(1)
            assert blocked_per_row.eq((groups - 1) * group_size).all()  # other groups: blocked

    targets = make_targets([1, 4])
    dn = prepare_for_cdn(targets, nn.Embedding(5, 8), num_queries=6, num_classes=5, dn_number=9)
    assert torch.equal(dn.attn_mask, reference_attn_mask(2, 8, 6))


@pytest.mark.parametrize("label_noise_ratio", [0.5, 0.2])
def test_label_noise_rate(label_noise_ratio):
    num_classes = 4
    # 8 images x 250 targets x 10 groups x 2 halves = 40000 labels, with a small mask.
    targets = make_targets([250] * 8, num_classes)
    dn = prepare_for_cdn(
        targets, one_hot_embedding(num_classes), num_queries=1, num_classes=num_classes,
        dn_number=2500, label_noise_ratio=label_noise_ratio, box_noise_scale=0.0,
    )  # fmt: skip
    groups = dn.dn_meta["num_dn_group"]
    assert groups == 10
    noised = dn.query_label.argmax(-1)  # [B, pad_size]; no padding: equal target counts
    original = torch.stack([target["labels"].repeat(2 * groups) for target in targets])
    changed = (noised != original).float().mean().item()
    # A label is redrawn with probability ratio / 2; a uniform redraw keeps it 1 / K of times.
    expected = label_noise_ratio * 0.5 * (1 - 1 / num_classes)
    assert abs(changed - expected) < 0.008, (changed, expected)  # > 4 standard deviations
    assert noised.min() >= 0 and noised.max() < num_classes


@pytest.mark.parametrize("box_noise_scale", [1.0, 0.4])
def test_box_noise_bands(box_noise_scale):
    targets = make_targets([40, 25], dtype=torch.float64)
    dn = prepare_for_cdn(
        targets, nn.Embedding(5, 4), num_queries=3, num_classes=5, dn_number=400,
        label_noise_ratio=0.0, box_noise_scale=box_noise_scale,
    )  # fmt: skip
    groups, max_targets = dn.dn_meta["num_dn_group"], 40
    assert groups == 10
    for image, target in enumerate(targets):
        count = len(target["labels"])
        boxes = dn.query_bbox[image].sigmoid().view(groups, 2, max_targets, 4)[:, :, :count]
        original = box_cxcywh_to_xyxy(target["boxes"])
        half_size = target["boxes"][:, 2:].repeat(1, 2) / 2
        # Corner offsets in units of box_noise_scale * half the box size.
        ratio = (box_cxcywh_to_xyxy(boxes) - original) / (half_size * box_noise_scale)
        positive, negative = ratio[:, 0].abs(), ratio[:, 1].abs()
        assert positive.max() < 1 + 1e-6
        assert positive.max() > 0.9  # the noise is really drawn over [0, 1)
        # A negative whose corners cross is stored with a clamped (eps) size; its corners are
        # not recoverable, so check the band on the others (most of them).
        sizes = boxes[:, 1, :, 2:]
        intact = (sizes > 0.01).all(-1)
        assert intact.float().mean() > 0.5
        assert negative[intact].min() > 1 - 1e-6
        assert negative[intact].max() < 2 + 1e-6


def test_box_noise_clamps_to_image():
    targets = [{"labels": torch.tensor([0]), "boxes": torch.tensor([[0.02, 0.98, 0.04, 0.04]])}]
    dn = prepare_for_cdn(targets, nn.Embedding(2, 4), 1, 2, dn_number=200, box_noise_scale=1.0)
    corners = box_cxcywh_to_xyxy(dn.query_bbox[0].sigmoid())
    assert corners.min() >= -1e-3 and corners.max() <= 1 + 1e-3


def test_zero_targets_and_disabled():
    label_enc = nn.Embedding(3, 4)
    empty = {"labels": torch.zeros(0, dtype=torch.long), "boxes": torch.zeros(0, 4)}
    assert prepare_for_cdn([empty, empty], label_enc, 5, 3) is None
    targets = make_targets([2], num_classes=3)
    assert prepare_for_cdn(targets, label_enc, 5, 3, dn_number=0) is None

    dn = prepare_for_cdn([empty] + targets, label_enc, 5, 3, dn_number=4)
    assert dn.dn_meta == {"pad_size": 8, "num_dn_group": 2}
    assert torch.all(dn.query_label[0] == 0) and torch.all(dn.query_bbox[0] == 0)
    indices = denoising_indices([empty] + targets, dn.dn_meta)
    assert indices[0][0].numel() == 0 and indices[0][1].numel() == 0
    assert indices[1][0].tolist() == [0, 1, 4, 5]
    assert indices[1][1].tolist() == [0, 1, 0, 1]


def test_bad_targets_raise():
    with pytest.raises(ValueError, match="labels"):
        prepare_for_cdn([{"boxes": torch.zeros(1, 4)}], nn.Embedding(2, 4), 5, 2)
    with pytest.raises(ValueError, match=r"boxes \[n, 4\]"):
        bad = {"labels": torch.zeros(2, dtype=torch.long), "boxes": torch.zeros(3, 4)}
        prepare_for_cdn([bad], nn.Embedding(2, 4), 5, 2)


def test_generator_eval_mode_has_no_dn_and_grad_reaches_label_enc():
    generator = CdnQueryGenerator(num_classes=3, dn_number=6)
    label_enc = nn.Embedding(3, 4)
    targets = make_targets([2, 1], num_classes=3)
    dn = generator(targets, label_enc, num_queries=4)
    assert dn is not None
    dn.query_label.sum().backward()
    assert label_enc.weight.grad is not None and label_enc.weight.grad.abs().sum() > 0
    generator.eval()
    assert generator(targets, label_enc, num_queries=4) is None


def test_dn_post_process_and_indices():
    targets = make_targets([2, 1])
    dn = prepare_for_cdn(targets, nn.Embedding(5, 4), 3, 5, dn_number=4, box_noise_scale=0.0)
    pad_size = dn.dn_meta["pad_size"]
    outputs_class = torch.randn(6, 2, pad_size + 3, 5)
    outputs_coord = torch.rand(6, 2, pad_size + 3, 4)
    match_class, match_coord, dn_class, dn_coord = dn_post_process(
        outputs_class, outputs_coord, dn.dn_meta
    )
    assert torch.equal(match_class, outputs_class[:, :, pad_size:])
    assert torch.equal(match_coord, outputs_coord[:, :, pad_size:])
    assert torch.equal(dn_class, outputs_class[:, :, :pad_size])
    assert torch.equal(dn_coord, outputs_coord[:, :, :pad_size])
    assert dn_post_process(outputs_class, outputs_coord, None)[2:] == (None, None)

    # Without box noise, every assigned (positive) query holds its target's box.
    for image, (query_index, target_index) in enumerate(denoising_indices(targets, dn.dn_meta)):
        torch.testing.assert_close(
            dn.query_bbox[image, query_index].sigmoid(),
            targets[image]["boxes"][target_index],
            atol=1e-5,
            rtol=0,
        )
        assert len(query_index) == 2 * len(targets[image]["labels"])


# Found by `make mutate` (mutmut survivors).
def test_box_noise_moves_corners_both_ways_over_the_whole_band():
    targets = make_targets([40], dtype=torch.float64)
    dn = prepare_for_cdn(
        targets, nn.Embedding(5, 4), num_queries=3, num_classes=5, dn_number=400,
        label_noise_ratio=0.0, box_noise_scale=0.4,
    )  # fmt: skip
    groups = dn.dn_meta["num_dn_group"]
    boxes = dn.query_bbox[0].sigmoid().view(groups, 2, 40, 4)
    half_size = targets[0]["boxes"][:, 2:].repeat(1, 2) / 2
    ratio = (box_cxcywh_to_xyxy(boxes) - box_cxcywh_to_xyxy(targets[0]["boxes"])) / (
        half_size * 0.4
    )
    for half in (ratio[:, 0], ratio[:, 1]):  # positives, negatives
        assert (half > 0).float().mean() > 0.4 and (half < 0).float().mean() > 0.4
    assert ratio[:, 1].abs().max() > 1.9 and ratio[:, 1].abs().min() < 1.1  # all of [1, 2)


def test_label_noise_one_redraws_half_of_the_labels_from_every_class():
    targets = make_targets([200] * 4, num_classes=3)
    for target in targets:
        target["labels"].fill_(2)
    dn = prepare_for_cdn(
        targets, one_hot_embedding(3), num_queries=1, num_classes=3, dn_number=2000,
        label_noise_ratio=1.0, box_noise_scale=0.0,
    )  # fmt: skip
    noised = dn.query_label.argmax(-1)
    assert set(noised.unique().tolist()) == {0, 1, 2}  # class 0 is a possible redraw
    # Redrawn with probability 1/2, to one of 3 classes: 1/3 of the labels change.
    assert abs((noised != 2).float().mean().item() - 1 / 3) < 0.02


def test_single_class_and_a_single_group_are_valid():
    targets = make_targets([3, 1], num_classes=1)
    dn = prepare_for_cdn(targets, nn.Embedding(1, 4), 2, num_classes=1, dn_number=1)
    assert dn.dn_meta == {"pad_size": 6, "num_dn_group": 1}


def test_generator_passes_its_settings():
    """``CdnQueryGenerator``'s ``dn_number`` / noise settings reach ``prepare_for_cdn``:
    without noise the queries are the targets themselves, in the requested group count."""
    targets = make_targets([2, 1], num_classes=3)
    generator = CdnQueryGenerator(3, dn_number=6, label_noise_ratio=0.0, box_noise_scale=0.0)
    dn = generator(targets, one_hot_embedding(3), num_queries=4)
    assert dn.dn_meta == {"pad_size": 12, "num_dn_group": 3}
    boxes = dn.query_bbox[0].sigmoid().view(6, 2, 4)
    torch.testing.assert_close(boxes, targets[0]["boxes"].expand(6, 2, 4))
    assert (dn.query_label[0].argmax(-1).view(6, 2) == targets[0]["labels"]).all()


def test_argument_errors_name_function_and_values():
    label_enc, targets = nn.Embedding(2, 4), make_targets([1], num_classes=2)
    for kwargs, message in [
        ({"num_classes": 0}, "expected num_classes >= 1, got 0"),
        ({"label_noise_ratio": 1.5}, r"expected label_noise_ratio in \[0, 1\], got 1.5"),
        ({"box_noise_scale": -1.0}, "expected box_noise_scale >= 0, got -1.0"),
    ]:
        with pytest.raises(ValueError, match="prepare_for_cdn: " + message):
            prepare_for_cdn(targets, label_enc, 5, **{"num_classes": 2, **kwargs})
    with pytest.raises(ValueError, match="prepare_for_cdn: expected one target dict per image"):
        prepare_for_cdn([], label_enc, 5, 2)


@pytest.mark.parametrize(
    "module", [nn.Embedding(4, 3), nn.Linear(3, 3)], ids=["embedding", "linear"]
)
def test_keep_parameters_in_graph_reaches_every_parameter_and_changes_nothing(module):
    """Grounding DINO's label_enc is a Linear: keeping only its weight in the graph left its
    bias without a gradient, and DDP failed on the step after a batch without objects."""
    states = torch.randn(2, 5, 3, requires_grad=True)
    kept = keep_parameters_in_graph(states, module)
    torch.testing.assert_close(kept, states, rtol=0, atol=0)
    kept.sum().backward()
    for name, param in module.named_parameters():
        assert param.grad is not None and not param.grad.any(), name
    torch.testing.assert_close(states.grad, torch.ones_like(states))
