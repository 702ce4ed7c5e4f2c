"""Contrastive denoising (CDN) queries, as in DINO (Zhang et al., ICLR 2023) and detrex.

During training, noised copies of the ground-truth boxes are fed to the decoder next to the
ordinary (matching) queries, and the decoder is asked to reconstruct the original boxes. The
copies come in ``num_dn_group`` groups; each group holds one *positive* and one *negative*
copy of every target of an image:

- positives: corners moved by less than ``box_noise_scale`` times half the box size (per
  coordinate); they must reconstruct their target;
- negatives: corners moved by between 1x and 2x that amount; they must predict "no object".

Labels of both halves are replaced by a random class with probability
``label_noise_ratio * 0.5`` (the random class may equal the true one).

Query layout of the denoising part (length ``pad_size``) for an image, with ``M`` the largest
number of targets of an image in the batch: group ``g`` occupies
``[2 * M * g, 2 * M * (g + 1))``, positives first (``2 * M * g + j`` for target ``j``), then
negatives (``2 * M * g + M + j``). Slots past an image's own targets are padding: zero label
embedding and zero box logits (detrex fills them the same way, so they do take part in the
self-attention of their group); the losses treat them as background.

The self-attention mask (True = blocked) lets the matching queries see only each other, and
each denoising group see itself and the matching queries, never another group.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn

from .box_ops import box_cxcywh_to_xyxy, box_xyxy_to_cxcywh, inverse_sigmoid

__all__ = [
    "CdnQueryGenerator",
    "DenoisingQueries",
    "build_dn_attn_mask",
    "denoising_indices",
    "dn_post_process",
    "keep_parameters_in_graph",
    "num_denoising_groups",
    "prepare_for_cdn",
]


class DenoisingQueries(NamedTuple):
    """The decoder inputs of contrastive denoising for one batch.

    Attributes:
        query_label: ``[B, pad_size, C]`` content queries: label embeddings of the noised
            labels (zeros at padding slots).
        query_bbox: ``[B, pad_size, 4]`` reference boxes: ``inverse_sigmoid`` of the noised
            normalized ``cxcywh`` boxes (zeros at padding slots).
        attn_mask: ``[pad_size + num_queries, pad_size + num_queries]`` bool self-attention
            mask for the decoder, True = may not attend; the denoising queries come first.
        dn_meta: ``{"pad_size": int, "num_dn_group": int}``; a group spans
            ``pad_size // num_dn_group`` queries (positives, then negatives).
    """

    query_label: Tensor
    query_bbox: Tensor
    attn_mask: Tensor
    dn_meta: dict[str, int]


def num_denoising_groups(dn_number: int, max_num_targets: int) -> int:
    """Number of denoising groups: ``dn_number // max_num_targets``, at least 1.

    This is detrex's ``(2 * dn_number) // (2 * max_num_targets)``: about ``dn_number``
    positive (and as many negative) queries per image, whatever the number of targets.
    """
    if max_num_targets < 1:
        raise ValueError(
            f"num_denoising_groups: expected max_num_targets >= 1, got {max_num_targets}"
        )
    return max(dn_number // max_num_targets, 1)


def build_dn_attn_mask(
    num_dn_group: int, group_size: int, num_queries: int, device: torch.device | str | None = None
) -> Tensor:
    """Self-attention mask of ``num_dn_group`` denoising groups followed by the matching queries.

    Args:
        num_dn_group: number of denoising groups.
        group_size: queries per group (``2 * max_num_targets``).
        num_queries: number of matching queries.
        device: device of the mask.

    Returns:
        ``[T, T]`` bool with ``T = num_dn_group * group_size + num_queries``; True where the
        query of the row may not attend to the query of the column: matching rows never see
        denoising columns, and a denoising row sees only its own group and the matching
        queries.
    """
    pad_size = num_dn_group * group_size
    size = pad_size + num_queries
    attn_mask = torch.zeros(size, size, dtype=torch.bool, device=device)
    attn_mask[pad_size:, :pad_size] = True
    group_of_query = torch.arange(pad_size, device=device) // group_size
    attn_mask[:pad_size, :pad_size] = group_of_query[:, None] != group_of_query[None, :]
    return attn_mask


def _check_targets(targets: Sequence[Mapping[str, Tensor]], where: str) -> None:
    if len(targets) == 0:
        raise ValueError(f"{where}: expected one target dict per image, got an empty list")
    for index, target in enumerate(targets):
        if "labels" not in target or "boxes" not in target:
            raise ValueError(
                f"{where}: targets[{index}] must contain 'labels' and 'boxes', "
                f"got keys {sorted(target)}"
            )
        labels, boxes = target["labels"], target["boxes"]
        if labels.dim() != 1 or boxes.shape != (labels.shape[0], 4):
            raise ValueError(
                f"{where}: targets[{index}] expected labels [n] and boxes [n, 4] (normalized "
                f"cxcywh), got labels {tuple(labels.shape)} and boxes {tuple(boxes.shape)}"
            )


def prepare_for_cdn(
    targets: Sequence[Mapping[str, Tensor]],
    label_enc: nn.Embedding,
    num_queries: int,
    num_classes: int,
    dn_number: int = 100,
    label_noise_ratio: float = 0.5,
    box_noise_scale: float = 1.0,
) -> DenoisingQueries | None:
    """Build the contrastive denoising queries of a batch (DINO's ``prepare_for_cdn``).

    The random draws are made in detrex's order (label noise, then box sign, then box
    magnitude), with the same tensor shapes.

    Args:
        targets: ``B`` dicts with ``"labels"``: int ``[n_i]`` and ``"boxes"``: ``[n_i, 4]``
            normalized ``cxcywh``; ``n_i`` may be 0.
        label_enc: embedding of the ``num_classes`` labels into the decoder width ``C``.
        num_queries: number of matching queries that follow the denoising queries.
        num_classes: number of classes ``K``; noised labels are drawn from ``[0, K)``.
        dn_number: about how many positive denoising queries per image; the number of groups
            is ``max(dn_number // max_i n_i, 1)``.
        label_noise_ratio: a label is replaced by a random class with probability
            ``label_noise_ratio * 0.5``; 0 disables label noise.
        box_noise_scale: scale of the corner noise, in units of half the box width / height;
            0 disables box noise (positives and negatives then equal the targets).

    Returns:
        The queries, mask and metadata (see :class:`DenoisingQueries`), or None when there is
        nothing to denoise (``dn_number <= 0`` or no image has a target).
    """
    where = "prepare_for_cdn"
    _check_targets(targets, where)
    if num_classes < 1:
        raise ValueError(f"{where}: expected num_classes >= 1, got {num_classes}")
    if not 0.0 <= label_noise_ratio <= 1.0:
        raise ValueError(f"{where}: expected label_noise_ratio in [0, 1], got {label_noise_ratio}")
    if box_noise_scale < 0:
        raise ValueError(f"{where}: expected box_noise_scale >= 0, got {box_noise_scale}")
    if dn_number <= 0:
        return None
    counts = [int(target["labels"].shape[0]) for target in targets]
    max_num_targets = max(counts)
    if max_num_targets == 0:
        return None

    num_dn_group = num_denoising_groups(dn_number, max_num_targets)
    num_copies = 2 * num_dn_group  # a positive and a negative copy per group
    labels = torch.cat([target["labels"] for target in targets]).long()  # [N]
    boxes = torch.cat([target["boxes"] for target in targets])  # [N, 4]
    device = boxes.device
    num_targets = labels.shape[0]
    image_index = torch.cat(
        [torch.full((count,), i, dtype=torch.long, device=device) for i, count in enumerate(counts)]
    )
    index_in_image = torch.cat([torch.arange(count, device=device) for count in counts])

    # Copy c (c = 2 * group + {0: positive, 1: negative}) of target t is row c * N + t.
    noised_labels = labels.repeat(num_copies)  # [2G * N]
    known_boxes = boxes.repeat(num_copies, 1)  # [2G * N, 4]
    noised_boxes = known_boxes.clone()

    if label_noise_ratio > 0:
        draw = torch.rand_like(noised_labels.float())
        flipped = torch.nonzero(draw < label_noise_ratio * 0.5).view(-1)
        random_labels = torch.randint_like(flipped, 0, num_classes)
        noised_labels.scatter_(0, flipped, random_labels)

    if box_noise_scale > 0:
        positive_rows = (
            torch.arange(num_targets, device=device)[None, :]
            + (torch.arange(num_dn_group, device=device) * 2 * num_targets)[:, None]
        ).flatten()
        negative_rows = positive_rows + num_targets
        corners = box_cxcywh_to_xyxy(known_boxes)
        half_size = known_boxes[:, 2:].repeat(1, 2) / 2  # (w/2, h/2, w/2, h/2)
        sign = torch.randint_like(known_boxes, low=0, high=2, dtype=torch.float32) * 2.0 - 1.0
        magnitude = torch.rand_like(known_boxes)
        magnitude[negative_rows] += 1.0  # negatives: in [1, 2) half sizes, positives [0, 1)
        offset = magnitude * sign
        corners = corners + torch.mul(offset, half_size) * box_noise_scale
        noised_boxes = box_xyxy_to_cxcywh(corners.clamp(min=0.0, max=1.0))

    label_embed = label_enc(noised_labels)  # [2G * N, C]
    bbox_logits = inverse_sigmoid(noised_boxes)  # [2G * N, 4]

    batch_size = len(targets)
    pad_size = num_copies * max_num_targets
    query_label = label_embed.new_zeros(batch_size, pad_size, label_embed.shape[-1])
    query_bbox = bbox_logits.new_zeros(batch_size, pad_size, 4)
    slot = torch.cat([index_in_image + max_num_targets * copy for copy in range(num_copies)])
    batch_slot = image_index.repeat(num_copies)
    query_label[batch_slot, slot] = label_embed
    query_bbox[batch_slot, slot] = bbox_logits

    attn_mask = build_dn_attn_mask(num_dn_group, 2 * max_num_targets, num_queries, device)
    dn_meta = {"pad_size": pad_size, "num_dn_group": num_dn_group}
    return DenoisingQueries(query_label, query_bbox, attn_mask, dn_meta)


class CdnQueryGenerator(nn.Module):
    """Contrastive denoising settings; builds the queries in training mode only.

    The module has no parameters: the label embedding belongs to the detector (detrex keeps
    it as ``label_enc``) and is passed to :meth:`forward`.

    Args:
        num_classes: number of classes ``K``.
        dn_number: about how many positive denoising queries per image.
        label_noise_ratio: labels are flipped with probability ``label_noise_ratio * 0.5``.
        box_noise_scale: corner noise in units of half the box size.
    """

    def __init__(
        self,
        num_classes: int,
        dn_number: int = 100,
        label_noise_ratio: float = 0.5,
        box_noise_scale: float = 1.0,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.dn_number = dn_number
        self.label_noise_ratio = label_noise_ratio
        self.box_noise_scale = box_noise_scale

    def forward(
        self, targets: Sequence[Mapping[str, Tensor]], label_enc: nn.Embedding, num_queries: int
    ) -> DenoisingQueries | None:
        """:func:`prepare_for_cdn` in training mode; None in eval mode (no denoising)."""
        if not self.training:
            return None
        return prepare_for_cdn(
            targets,
            label_enc,
            num_queries=num_queries,
            num_classes=self.num_classes,
            dn_number=self.dn_number,
            label_noise_ratio=self.label_noise_ratio,
            box_noise_scale=self.box_noise_scale,
        )

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, dn_number={self.dn_number}, "
            f"label_noise_ratio={self.label_noise_ratio}, box_noise_scale={self.box_noise_scale}"
        )


def dn_post_process(
    outputs_class: Tensor, outputs_coord: Tensor, dn_meta: Mapping[str, int] | None
) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    """Split decoder predictions into the matching part and the denoising part.

    Args:
        outputs_class: ``[..., pad_size + num_queries, K]`` logits (e.g. ``[L, B, T, K]``).
        outputs_coord: ``[..., pad_size + num_queries, 4]`` boxes.
        dn_meta: the ``dn_meta`` of :class:`DenoisingQueries`, or None (no denoising).

    Returns:
        ``(class, coord, dn_class, dn_coord)``: the matching predictions
        ``[..., num_queries, *]`` and the denoising predictions ``[..., pad_size, *]`` (both
        None when ``dn_meta`` is None or ``pad_size`` is 0).
    """
    if not dn_meta or dn_meta["pad_size"] <= 0:
        return outputs_class, outputs_coord, None, None
    pad_size = dn_meta["pad_size"]
    if outputs_class.shape[-2] < pad_size or outputs_coord.shape[-2] != outputs_class.shape[-2]:
        raise ValueError(
            f"dn_post_process: expected predictions with at least pad_size={pad_size} queries "
            f"in dim -2, got class {tuple(outputs_class.shape)} and coord "
            f"{tuple(outputs_coord.shape)}"
        )
    return (
        outputs_class[..., pad_size:, :],
        outputs_coord[..., pad_size:, :],
        outputs_class[..., :pad_size, :],
        outputs_coord[..., :pad_size, :],
    )


def denoising_indices(
    targets: Sequence[Mapping[str, Tensor]], dn_meta: Mapping[str, int]
) -> list[tuple[Tensor, Tensor]]:
    """The fixed assignment of positive denoising queries to their targets (no matching).

    Args:
        targets: the ``B`` target dicts the queries were built from.
        dn_meta: ``{"pad_size", "num_dn_group"}`` from :func:`prepare_for_cdn`.

    Returns:
        Per image ``(query_index, target_index)`` int64 tensors of length
        ``num_dn_group * n_i``: query ``g * group_size + j`` reconstructs target ``j``
        (negatives and padding slots are unassigned, i.e. background).
    """
    num_dn_group = dn_meta["num_dn_group"]
    group_size = dn_meta["pad_size"] // num_dn_group
    indices = []
    for target in targets:
        labels = target["labels"]
        target_index = torch.arange(labels.shape[0], device=labels.device).repeat(num_dn_group)
        group_start = torch.arange(num_dn_group, device=labels.device) * group_size
        query_index = (
            group_start[:, None] + torch.arange(labels.shape[0], device=labels.device)[None, :]
        ).flatten()
        indices.append((query_index, target_index))
    return indices


def keep_parameters_in_graph(tensor: Tensor, module: nn.Module) -> Tensor:
    """``tensor`` plus 0 times one element of each trainable parameter of ``module``: the same
    values, with every parameter in the autograd graph (its gradient 0).

    For the label embedding that only denoising queries use: a batch without objects on one
    rank has no denoising queries, the embedding would get no gradient there, and DDP
    (``find_unused_parameters=False``) fails the next step. Every parameter counts, whatever
    the module (an ``nn.Embedding`` has a weight, an ``nn.Linear`` a weight and a bias).
    """
    anchor = sum(param.reshape(-1)[0] for param in module.parameters() if param.requires_grad)
    return tensor + anchor * 0.0
