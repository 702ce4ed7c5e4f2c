"""``DETRDetectorBase``: the network of DETR (Carion et al., "End-to-End Object Detection with
Transformers", ECCV 2020), for the detectors built on it.

The last backbone feature map is projected to ``embed_dim`` channels, encoded with a sine
position embedding, and decoded by ``num_queries`` learned queries; each decoder output gives
``K + 1`` class logits (the last is no-object) and a normalized ``cxcywh`` box. Parameter names
follow detrex's ``DETR``, so detrex checkpoints load unchanged.

The class is not registered with detectron2's ``META_ARCH_REGISTRY``: each project registers
its own subclass (``projects/detr``: ``DETR``; a project scaffolded with
``tools/new_project.py --base detr``), so that a project never imports another.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from detectron2.structures import ImageList, Instances
from torch import Tensor, nn

from detr_ext.layers import MLP, DetrTransformer, resize_padding_mask

from .base import DetectorBase

__all__ = ["DETRDetectorBase", "DETRNetworkOutputs"]


class DETRNetworkOutputs(NamedTuple):
    """What DETR's network computes before its class and box heads
    (:meth:`DETRDetectorBase.forward_network`), for ``h x w`` the last feature map's size.

    Attributes:
        backbone_features: the backbone's output dict, ``name -> [B, C_name, H_name, W_name]``.
        features: ``[B, C, h, w]`` the last feature map projected to ``embed_dim`` channels.
        mask: ``[B, h, w]`` bool padding mask at that resolution, True on padding.
        hidden_states: ``[L, B, Q, C]`` decoder outputs (every layer, normalized).
        memory: ``[B, C, h, w]`` encoder output.
    """

    backbone_features: dict[str, Tensor]
    features: Tensor
    mask: Tensor
    hidden_states: Tensor
    memory: Tensor


class DETRDetectorBase(DetectorBase):
    """Backbone (last feature map) -> DETR transformer -> class / box heads: DETR's network,
    unregistered. Registered subclass: ``projects.detr`` ``DETR``.

    The last backbone feature map is projected to ``embed_dim`` channels, encoded with a
    sine position embedding, and decoded by ``num_queries`` learned queries; each decoder
    output gives ``K + 1`` class logits (the last is no-object) and a normalized ``cxcywh``
    box. Training matches queries to ground truth one-to-one (``criterion``), with the same
    losses on every decoder layer when ``aux_loss``. Inference keeps every query with its best
    non-background class (:meth:`DetectorBase.inference_softmax`).

    Parameter names follow detrex's DETR: ``backbone.*``, ``input_proj``, ``transformer.*``,
    ``query_embed``, ``class_embed``, ``bbox_embed``, ``criterion.empty_weight``.

    Args:
        backbone: returns a dict of feature maps; ``in_features[-1]`` is used.
        in_features: backbone outputs; DETR uses only the last, e.g. ``["res5"]``.
        in_channels: channels of that feature map (2048 for ResNet-50 res5).
        position_embedding: maps the ``[B, h, w]`` padding mask to ``[B, embed_dim, h, w]``.
        transformer: a :class:`~detr_ext.layers.DetrTransformer`.
        embed_dim: transformer channels.
        num_classes: object classes ``K``.
        num_queries: object queries ``Q``.
        criterion: loss module ``(outputs, targets) -> weighted losses`` using ``"ce_loss"``.
        aux_loss: add ``outputs["aux_outputs"]`` (the earlier decoder layers) for losses.
        pixel_mean, pixel_std, input_format, select_box_nums_for_evaluation, size_divisibility:
            see :class:`DetectorBase`.
    """

    def __init__(
        self,
        *,
        backbone: nn.Module,
        in_features: Sequence[str] = ("res5",),
        in_channels: int = 2048,
        position_embedding: nn.Module,
        transformer: DetrTransformer,
        embed_dim: int = 256,
        num_classes: int = 80,
        num_queries: int = 100,
        criterion: nn.Module,
        aux_loss: bool = True,
        pixel_mean: Sequence[float] = (123.675, 116.280, 103.530),
        pixel_std: Sequence[float] = (58.395, 57.120, 57.375),
        input_format: str = "RGB",
        select_box_nums_for_evaluation: int = 100,
        size_divisibility: int = 0,
    ) -> None:
        super().__init__(
            backbone=backbone,
            num_classes=num_classes,
            pixel_mean=pixel_mean,
            pixel_std=pixel_std,
            input_format=input_format,
            select_box_nums_for_evaluation=select_box_nums_for_evaluation,
            size_divisibility=size_divisibility,
        )
        if len(in_features) == 0:
            raise ValueError(
                f"{type(self).__name__}: expected at least one backbone feature name in in_features"
            )
        if getattr(transformer, "embed_dim", embed_dim) != embed_dim:
            raise ValueError(
                f"{type(self).__name__}: expected a transformer with embed_dim={embed_dim}, "
                f"got {transformer.embed_dim}"
            )
        self.in_features = list(in_features)
        self.position_embedding = position_embedding
        self.input_proj = nn.Conv2d(in_channels, embed_dim, kernel_size=1)
        self.transformer = transformer
        self.query_embed = nn.Embedding(num_queries, embed_dim)
        self.class_embed = nn.Linear(embed_dim, num_classes + 1)
        self.bbox_embed = MLP(embed_dim, embed_dim, 4, num_layers=3)
        self.criterion = criterion
        self.num_queries = num_queries
        self.aux_loss = aux_loss

    def forward_outputs(
        self,
        images: ImageList,
        padding_mask: Tensor,
        targets: list[dict[str, Tensor]] | None,
    ) -> dict[str, Any]:
        """Predictions of every decoder layer for the batch.

        Returns:
            ``{"pred_logits": [B, Q, K + 1], "pred_boxes": [B, Q, 4]}`` of the last decoder
            layer, plus ``"aux_outputs"``: a list of such dicts for the other layers (first
            to second to last) when ``aux_loss``.
        """
        return self.head_outputs(self.forward_network(images, padding_mask).hidden_states)

    def forward_network(self, images: ImageList, padding_mask: Tensor) -> DETRNetworkOutputs:
        """Backbone, input projection and transformer: everything before the heads, kept
        for subclasses that add heads (e.g. DETR's segmentation head reads the encoder memory
        and the backbone's finer feature maps).

        Args:
            images: normalized, padded batch, ``images.tensor``: ``[B, 3, H, W]``.
            padding_mask: ``[B, H, W]`` bool, True on padding.
        """
        feature_name = self.in_features[-1]
        backbone_features = self.backbone(images.tensor)
        if feature_name not in backbone_features:
            raise ValueError(
                f"{type(self).__name__}: backbone output has no feature {feature_name!r} "
                f"(in_features), got "
                f"{sorted(backbone_features)}"
            )
        features = self.input_proj(backbone_features[feature_name])  # [B, C, h, w]
        mask = resize_padding_mask(padding_mask, features.shape[-2:], self.feature_stride())
        pos_embed = self.position_embedding(mask).to(features.dtype)
        hidden_states, memory = self.transformer(features, mask, self.query_embed.weight, pos_embed)
        return DETRNetworkOutputs(backbone_features, features, mask, hidden_states, memory)

    def feature_stride(self) -> int | None:
        """The stride of the transformer's feature map (``backbone.output_shape()``), for an
        exact padding mask; ``None`` when the backbone does not say."""
        if not hasattr(self.backbone, "output_shape"):
            return None
        shape = self.backbone.output_shape().get(self.in_features[-1])
        return None if shape is None else shape.stride

    def head_outputs(self, hidden_states: Tensor) -> dict[str, Any]:
        """Class and box heads on the decoder outputs ``hidden_states``: ``[L, B, Q, C]``;
        returns the dict of :meth:`forward_outputs`."""
        logits = self.class_embed(hidden_states)  # [L, B, Q, K + 1]
        boxes = self.bbox_embed(hidden_states).sigmoid()  # [L, B, Q, 4]
        outputs: dict[str, Any] = {"pred_logits": logits[-1], "pred_boxes": boxes[-1]}
        if self.aux_loss:
            outputs["aux_outputs"] = [
                {"pred_logits": layer_logits, "pred_boxes": layer_boxes}
                for layer_logits, layer_boxes in zip(logits[:-1], boxes[:-1], strict=True)
            ]
        return outputs

    def inference(
        self, outputs: Mapping[str, Any], image_sizes: Sequence[tuple[int, int]]
    ) -> list[Instances]:
        """One detection per query: its best class of the softmax without no-object."""
        return self.inference_softmax(outputs["pred_logits"], outputs["pred_boxes"], image_sizes)

    def inference_tensors(self, outputs: Mapping[str, Any]) -> tuple[Tensor, Tensor, Tensor]:
        """What :meth:`inference` wraps: ``(scores [B, Q], labels [B, Q], boxes [B, Q, 4])``
        (:meth:`DetectorBase.softmax_predictions`)."""
        return self.softmax_predictions(outputs["pred_logits"], outputs["pred_boxes"])
