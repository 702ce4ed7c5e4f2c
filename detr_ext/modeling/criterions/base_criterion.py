"""The set-prediction loss of DETR-family detectors (DETR, Deformable DETR, two-stage).

For every decoder layer the predictions are matched one-to-one to the ground truth, then

- ``loss_class``: cross-entropy over ``K + 1`` classes with the no-object class weighted by
  ``eos_coef`` (``"ce_loss"``, DETR), or the sigmoid focal loss over ``K`` classes
  (``"focal_loss"``, Deformable DETR); unmatched queries are background;
- ``loss_bbox``: L1 distance of matched ``cxcywh`` boxes, summed, divided by ``num_boxes``;
- ``loss_giou``: ``1 - GIoU`` of matched boxes, summed, divided by ``num_boxes``;

where ``num_boxes`` is the number of ground-truth boxes in the batch, averaged over the
distributed workers and clamped to at least 1. The formulas and normalizations are those of
detrex, so the same predictions and targets give the same loss values (this includes
detrex's corner case: a batch with fewer boxes in all than workers has its matching losses
scaled by boxes / workers against one process on the same images).

Distributed training: every worker runs exactly one ``all_reduce`` per forward (the box
count, :meth:`SetCriterion.get_num_boxes`), whatever its batch holds (no objects, no
denoising queries), so the workers always run the same collectives; subclasses reuse that one
``num_boxes`` rather than reducing again.

Precision: matching and losses run in float32 whatever dtype the predictions arrive in
(float16 / bfloat16 under autocast are cast up, autocast is off inside the criterion); the
losses are float32 and their gradients flow back in the predictions' dtype.

Loss keys: the last decoder layer gives the plain names, ``outputs["aux_outputs"][i]`` adds
the suffix ``_{i}``, and ``outputs["enc_outputs"]`` (two-stage proposals) adds ``_enc``.

Extension points for subclasses (DINO denoising, Align-DETR many-to-one):

- :meth:`SetCriterion.match` chooses the assignment for one layer (it gets the layer index);
- :meth:`SetCriterion.layer_losses` computes all losses of one layer;
- :meth:`SetCriterion.get_loss` maps a loss name to its function (extend ``LOSS_KEYS`` too);
- :meth:`SetCriterion.loss_labels` / :meth:`SetCriterion.loss_boxes` are the losses;
- :meth:`SetCriterion.encoder_targets` gives the targets for the encoder proposals;
- :meth:`SetCriterion.compute_losses` returns the unweighted losses: it takes the box count
  once and passes it to :meth:`SetCriterion.matching_losses`; override it to add more losses
  with the same ``num_boxes``, then :meth:`SetCriterion.weight_losses` applies
  ``weight_dict``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, ClassVar

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from detr_ext.layers.box_ops import box_cxcywh_to_xyxy, matched_generalized_box_iou
from detr_ext.modeling.losses.focal_loss import sigmoid_focal_loss
from detr_ext.modeling.losses.precision import autocast_disabled, full_precision
from detr_ext.modeling.matchers.hungarian_matcher import check_detection_inputs

__all__ = ["Indices", "SetCriterion"]

Indices = list[tuple[Tensor, Tensor]]
"""Per image ``(query_index, target_index)`` int64 tensors, as returned by the matchers."""


def add_suffix(losses: Mapping[str, Tensor], suffix: str) -> dict[str, Tensor]:
    """Rename ``{"loss_bbox": v}`` to ``{"loss_bbox" + suffix: v}``."""
    return {name + suffix: value for name, value in losses.items()}


class SetCriterion(nn.Module):
    """Hungarian-matched classification and box losses, weighted by ``weight_dict``.

    Args:
        num_classes: number of object classes ``K`` (without the no-object class).
        matcher: callable ``(outputs, targets) -> Indices``, e.g. ``HungarianMatcher``.
        weight_dict: loss weights. It must hold the base name of every computed loss
            (``loss_class`` for ``"class"``; ``loss_bbox`` and ``loss_giou`` for ``"boxes"``).
            A suffixed loss such as ``loss_class_0`` or ``loss_bbox_enc`` uses its exact key
            when present, otherwise the weight of the longest key that prefixes it followed by
            ``_`` (so ``loss_class_dn`` can weight all ``loss_class_dn_*``), usually the base.
        losses: which losses to compute, names from ``LOSS_KEYS``.
        loss_class_type: ``"focal_loss"`` (logits ``[B, Q, K]``; the default, as in detrex)
            or ``"ce_loss"`` (logits ``[B, Q, K + 1]``, the last column being no-object).
        eos_coef: cross-entropy weight of the no-object class (``"ce_loss"`` only).
        alpha: focal loss balance (``"focal_loss"`` only).
        gamma: focal loss focusing exponent (``"focal_loss"`` only).

    Inputs of :meth:`forward`:
        outputs: ``{"pred_logits": [B, Q, K or K + 1], "pred_boxes": [B, Q, 4]}`` (normalized
            ``cxcywh``), optionally ``"aux_outputs"``: a list of such dicts for the earlier
            decoder layers and ``"enc_outputs"``: one such dict for two-stage proposals.
        targets: ``B`` dicts with ``"labels"``: int64 ``[n_i]`` and ``"boxes"``: ``[n_i, 4]``
            (normalized ``cxcywh``).

    Returns:
        A dict of weighted scalar losses.
    """

    LOSS_KEYS: ClassVar[dict[str, tuple[str, ...]]] = {
        "class": ("loss_class",),
        "boxes": ("loss_bbox", "loss_giou"),
    }
    """Loss name (as given in ``losses``) -> the keys it produces."""

    LOSS_CLASS_TYPES: ClassVar[tuple[str, ...]] = ("ce_loss", "focal_loss")

    def __init__(
        self,
        num_classes: int,
        matcher: Callable[..., Indices],
        weight_dict: Mapping[str, float],
        losses: Iterable[str] = ("class", "boxes"),
        loss_class_type: str = "focal_loss",
        eos_coef: float = 0.1,
        alpha: float = 0.25,
        gamma: float = 2.0,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        if num_classes < 1:
            raise ValueError(f"{name}: expected num_classes >= 1, got {num_classes}")
        if loss_class_type not in self.LOSS_CLASS_TYPES:
            raise ValueError(
                f"{name}: expected loss_class_type in {self.LOSS_CLASS_TYPES}, "
                f"got {loss_class_type!r}"
            )
        losses = tuple(losses)
        unknown = [loss for loss in losses if loss not in self.LOSS_KEYS]
        if unknown:
            raise ValueError(
                f"{name}: expected losses from {sorted(self.LOSS_KEYS)}, got unknown {unknown}"
            )
        # Configs may pass an OmegaConf DictConfig; keep a plain dict of floats.
        weight_dict = {str(key): float(value) for key, value in weight_dict.items()}
        missing = [key for loss in losses for key in self.LOSS_KEYS[loss] if key not in weight_dict]
        if missing:
            raise ValueError(
                f"{name}: weight_dict must contain a weight for {missing}, "
                f"got keys {sorted(weight_dict)}"
            )

        self.num_classes = num_classes
        self.matcher = matcher
        self.weight_dict = weight_dict
        self.losses = losses
        self.loss_class_type = loss_class_type
        self.eos_coef = eos_coef
        self.alpha = alpha
        self.gamma = gamma
        if loss_class_type == "ce_loss":
            # A buffer (as in detrex) so it follows the module's device and checkpoints.
            empty_weight = torch.ones(num_classes + 1)
            empty_weight[-1] = eos_coef
            self.register_buffer("empty_weight", empty_weight)

    # ------------------------------------------------------------------ entry points

    def forward(
        self, outputs: Mapping[str, object], targets: Sequence[Mapping[str, Tensor]]
    ) -> dict[str, Tensor]:
        """Weighted losses of all layers; see the class docstring for the inputs.

        float16 / bfloat16 predictions are cast to float32 and autocast is turned off, so
        matching and losses run in float32 (see the module docstring).
        """
        outputs = full_precision(outputs)
        with autocast_disabled(outputs["pred_logits"].device):
            return self.weight_losses(self.compute_losses(outputs, targets))

    def compute_losses(
        self, outputs: Mapping[str, object], targets: Sequence[Mapping[str, Tensor]]
    ) -> dict[str, Tensor]:
        """Unweighted losses: :meth:`matching_losses` with the box count of
        :meth:`get_num_boxes` (its one collective per forward)."""
        num_boxes = self.get_num_boxes(targets, outputs["pred_logits"].device)
        return self.matching_losses(outputs, targets, num_boxes)

    def matching_losses(
        self,
        outputs: Mapping[str, object],
        targets: Sequence[Mapping[str, Tensor]],
        num_boxes: float,
    ) -> dict[str, Tensor]:
        """Unweighted losses of the last decoder layer, the auxiliary layers and the encoder,
        each normalized by ``num_boxes``.

        Layer indices given to :meth:`match`: ``aux_outputs[i]`` is layer ``i``, the main
        output is layer ``len(aux_outputs)``, and the encoder proposals are ``None``.
        """
        aux_outputs = list(outputs.get("aux_outputs") or [])
        losses = self.layer_losses(outputs, targets, num_boxes, layer_index=len(aux_outputs))
        for layer_index, layer_outputs in enumerate(aux_outputs):
            layer_losses = self.layer_losses(layer_outputs, targets, num_boxes, layer_index)
            losses.update(add_suffix(layer_losses, f"_{layer_index}"))
        if outputs.get("enc_outputs") is not None:
            enc_losses = self.layer_losses(
                outputs["enc_outputs"], self.encoder_targets(targets), num_boxes, None
            )
            losses.update(add_suffix(enc_losses, "_enc"))
        return losses

    # ------------------------------------------------------------------ hooks

    def get_num_boxes(self, targets: Sequence[Mapping[str, Tensor]], device: torch.device) -> float:
        """Number of target boxes per worker (all-reduced mean over workers), at least 1.

        In distributed training this is a collective: every worker must call it the same
        number of times per forward (:meth:`compute_losses` calls it once, also for a batch
        without targets), else the workers' collectives no longer pair up.
        """
        num_boxes = sum(len(target["labels"]) for target in targets)
        if not (dist.is_available() and dist.is_initialized()):
            return float(max(num_boxes, 1))
        total = torch.as_tensor([num_boxes], dtype=torch.float, device=device)
        dist.all_reduce(total)
        return torch.clamp(total / dist.get_world_size(), min=1).item()

    def match(
        self,
        outputs: Mapping[str, Tensor],
        targets: Sequence[Mapping[str, Tensor]],
        layer_index: int | None,
    ) -> Indices:
        """Assignment for one layer (``layer_index`` as in :meth:`compute_losses`).

        The base criterion uses the same one-to-one matcher for every layer; a many-to-one
        criterion (Align-DETR) overrides this to vary the assignment by layer.
        """
        return self.matcher(outputs, targets)

    def encoder_targets(
        self, targets: Sequence[Mapping[str, Tensor]]
    ) -> Sequence[Mapping[str, Tensor]]:
        """Targets for the two-stage encoder proposals; the decoder's targets by default."""
        return targets

    def layer_losses(
        self,
        outputs: Mapping[str, Tensor],
        targets: Sequence[Mapping[str, Tensor]],
        num_boxes: float,
        layer_index: int | None,
    ) -> dict[str, Tensor]:
        """Match one layer's predictions and compute every loss in ``self.losses`` for it
        (with the extra arguments of :meth:`layer_loss_kwargs`)."""
        check_detection_inputs(outputs, targets, type(self).__name__)
        indices = self.match(outputs, targets, layer_index)
        kwargs = self.layer_loss_kwargs(layer_index)
        losses: dict[str, Tensor] = {}
        for loss in self.losses:
            losses.update(self.get_loss(loss, outputs, targets, indices, num_boxes, **kwargs))
        return losses

    def layer_loss_kwargs(self, layer_index: int | None) -> dict[str, Any]:
        """Extra keyword arguments of the loss functions for one layer (``layer_index`` as in
        :meth:`compute_losses`); none here, Align-DETR passes its per-layer rank weights."""
        return {}

    def get_loss(
        self,
        loss: str,
        outputs: Mapping[str, Tensor],
        targets: Sequence[Mapping[str, Tensor]],
        indices: Indices,
        num_boxes: float,
        **kwargs,
    ) -> dict[str, Tensor]:
        """Compute the loss named ``loss`` (a key of ``LOSS_KEYS``); ``kwargs`` pass through."""
        loss_functions = {"class": self.loss_labels, "boxes": self.loss_boxes}
        if loss not in loss_functions:
            raise ValueError(
                f"{type(self).__name__}: expected a loss in {sorted(loss_functions)}, got {loss!r}"
            )
        return loss_functions[loss](outputs, targets, indices, num_boxes, **kwargs)

    # ------------------------------------------------------------------ losses

    @staticmethod
    def matched_query_index(indices: Indices) -> tuple[Tensor, Tensor]:
        """``(batch_index, query_index)`` of all matched queries, each ``[num_matched]``."""
        batch_index = torch.cat(
            [torch.full_like(query, image_index) for image_index, (query, _) in enumerate(indices)]
        )
        query_index = torch.cat([query for query, _ in indices])
        return batch_index, query_index

    @staticmethod
    def matched_targets(
        targets: Sequence[Mapping[str, Tensor]], indices: Indices, key: str
    ) -> Tensor:
        """``targets[i][key]`` of the matched targets of all images, concatenated.

        Ordered like :meth:`matched_query_index`, e.g. ``[num_matched, 4]`` for ``"boxes"``.
        """
        return torch.cat(
            [
                target[key][target_index]
                for target, (_, target_index) in zip(targets, indices, strict=True)
            ]
        )

    def loss_labels(
        self,
        outputs: Mapping[str, Tensor],
        targets: Sequence[Mapping[str, Tensor]],
        indices: Indices,
        num_boxes: float,
    ) -> dict[str, Tensor]:
        """Classification loss ``{"loss_class": scalar}``; unmatched queries are background."""
        logits = full_precision(outputs["pred_logits"])  # [B, Q, K] or [B, Q, K + 1]
        num_logits = self.num_classes + (1 if self.loss_class_type == "ce_loss" else 0)
        if logits.shape[-1] != num_logits:
            raise ValueError(
                f"{type(self).__name__}: with num_classes={self.num_classes} and "
                f"loss_class_type={self.loss_class_type!r}, expected pred_logits [B, Q, "
                f"{num_logits}], got {tuple(logits.shape)}"
            )
        batch_index, query_index = self.matched_query_index(indices)
        matched_labels = self.matched_targets(targets, indices, "labels")
        target_classes = torch.full(
            logits.shape[:2], self.num_classes, dtype=torch.int64, device=logits.device
        )
        target_classes[batch_index, query_index] = matched_labels.to(torch.int64)

        if self.loss_class_type == "ce_loss":
            loss_class = F.cross_entropy(logits.transpose(1, 2), target_classes, self.empty_weight)
        else:
            batch_size, num_queries, num_classes = logits.shape
            # One column more for the background index, dropped after the scatter.
            target_onehot = torch.zeros(
                (batch_size, num_queries, num_classes + 1),
                dtype=logits.dtype,
                layout=logits.layout,
                device=logits.device,
            )
            target_onehot.scatter_(2, target_classes.unsqueeze(-1), 1)
            target_onehot = target_onehot[:, :, :-1]
            # sigmoid_focal_loss averages over queries; multiplying by Q restores the sum.
            loss_class = (
                sigmoid_focal_loss(logits, target_onehot, num_boxes, self.alpha, self.gamma)
                * num_queries
            )
        return {"loss_class": loss_class}

    def loss_boxes(
        self,
        outputs: Mapping[str, Tensor],
        targets: Sequence[Mapping[str, Tensor]],
        indices: Indices,
        num_boxes: float,
        weights: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Box losses ``{"loss_bbox", "loss_giou"}`` over the matched pairs, each pair's
        multiplied by ``weights [num_matched]`` when given."""
        batch_index, query_index = self.matched_query_index(indices)
        pred_boxes = full_precision(outputs["pred_boxes"][batch_index, query_index])  # [M, 4]
        target_boxes = self.matched_targets(targets, indices, "boxes").to(pred_boxes.dtype)
        loss_bbox = F.l1_loss(pred_boxes, target_boxes, reduction="none")
        loss_giou = 1 - matched_generalized_box_iou(
            box_cxcywh_to_xyxy(pred_boxes), box_cxcywh_to_xyxy(target_boxes)
        )
        if weights is not None:
            loss_bbox = loss_bbox * weights[:, None]
            loss_giou = loss_giou * weights
        return {"loss_bbox": loss_bbox.sum() / num_boxes, "loss_giou": loss_giou.sum() / num_boxes}

    # ------------------------------------------------------------------ weighting

    def loss_weight(self, key: str) -> float:
        """Weight of loss ``key``: the exact key, else the longest ``prefix_`` in weight_dict."""
        if key in self.weight_dict:
            return self.weight_dict[key]
        prefixes = [name for name in self.weight_dict if key.startswith(name + "_")]
        if not prefixes:
            raise ValueError(
                f"{type(self).__name__}: no weight for loss {key!r}; expected {key!r} or its "
                f"base name in weight_dict, got keys {sorted(self.weight_dict)}"
            )
        return self.weight_dict[max(prefixes, key=len)]

    def weight_losses(self, losses: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Multiply every loss by :meth:`loss_weight` of its key."""
        return {key: value * self.loss_weight(key) for key, value in losses.items()}

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, losses={self.losses}, "
            f"loss_class_type={self.loss_class_type!r}, eos_coef={self.eos_coef}, "
            f"alpha={self.alpha}, gamma={self.gamma}, weight_dict={self.weight_dict}"
        )
