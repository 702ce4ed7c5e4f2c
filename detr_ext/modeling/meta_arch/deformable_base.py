"""``DeformableDetectorBase``: what the deformable DETR-family detectors (Deformable DETR,
DINO and their descendants) share on top of :class:`~detr_ext.modeling.DetectorBase`.

They run the same network shape: backbone -> neck (``L`` feature maps of width ``C``) ->
padding masks and position embeddings per level -> a deformable transformer -> per-layer
class / box heads, and the same inference (the best (query, class) pairs by sigmoid score).
This class holds those modules, builds the multi-scale inputs
(:meth:`~DeformableDetectorBase.multi_level_inputs`), the detrex-initialised heads
(:meth:`~DeformableDetectorBase.new_prediction_heads`), the per-layer predictions
(:meth:`~DeformableDetectorBase.layer_predictions`, :meth:`~DeformableDetectorBase.layer_outputs`)
and implements :meth:`~DeformableDetectorBase.inference`. A detector adds its heads, its
``forward_outputs`` and whatever else it needs (denoising queries, ...).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from detectron2.structures import ImageList, Instances
from torch import Tensor, nn

from detr_ext.layers import MLP, resize_padding_mask
from detr_ext.layers.box_ops import inverse_sigmoid

from .base import DetectorBase

__all__ = ["DeformableDetectorBase"]

# Initial foreground probability of the class heads (focal-loss prior, as in detrex).
CLASS_PRIOR_PROB = 0.01


class DeformableDetectorBase(DetectorBase):
    """Backbone -> neck (multi-scale maps) -> deformable transformer -> class / box heads.

    Modules are registered in detrex's order (``backbone``, ``position_embedding``, ``neck``,
    ``query_embedding`` if any, ``transformer``, ``criterion``); a subclass registers its heads
    (``class_embed``, ``bbox_embed``) after calling this ``__init__``.

    Args:
        backbone: returns a dict of feature maps, consumed by ``neck``.
        position_embedding: ``mask [B, H, W] -> [B, embed_dim, H, W]`` (sine, offset -0.5).
        neck: ``dict of maps -> list of num_feature_levels [B, embed_dim, H_l, W_l]``.
        transformer: the detector's deformable transformer, with ``embed_dim``.
        embed_dim: model width ``C``.
        num_classes: object classes ``K`` (sigmoid / focal loss, no background logit).
        num_queries: decoder queries.
        criterion: the training loss; it applies its own ``weight_dict``.
        pixel_mean, pixel_std: input normalization, in the input's channel order.
        aux_loss: also supervise the outputs of every earlier decoder layer.
        select_box_nums_for_evaluation: detections per image at inference.
        input_format: channel order of the input images.
        size_divisibility: pad batches to a multiple of this.
        query_embedding_dim: width of a learned ``query_embedding`` ``[num_queries,
            query_embedding_dim]`` (one-stage Deformable DETR: ``2 C``, positional and content
            queries); 0 for none.
    """

    def __init__(
        self,
        *,
        backbone: nn.Module,
        position_embedding: nn.Module,
        neck: nn.Module,
        transformer: nn.Module,
        embed_dim: int,
        num_classes: int,
        num_queries: int,
        criterion: nn.Module,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        aux_loss: bool = True,
        select_box_nums_for_evaluation: int = 100,
        input_format: str = "RGB",
        size_divisibility: int = 0,
        query_embedding_dim: int = 0,
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
        if transformer.embed_dim != embed_dim:
            raise ValueError(
                f"{type(self).__name__}: embed_dim={embed_dim} but the transformer has "
                f"embed_dim={transformer.embed_dim}"
            )
        self.position_embedding = position_embedding
        self.neck = neck
        self.num_queries = num_queries
        if query_embedding_dim:
            self.query_embedding = nn.Embedding(num_queries, query_embedding_dim)
        self.transformer = transformer
        self.embed_dim = embed_dim
        self.criterion = criterion
        self.aux_loss = aux_loss

    # ------------------------------------------------------------------ heads

    def new_prediction_heads(self) -> tuple[nn.Linear, MLP]:
        """A class head and a box head, initialised as in detrex.

        The class head ``[B, Q, C] -> [B, Q, K]`` has the bias of a 0.01 prior probability;
        the box head (3-layer MLP, ``[B, Q, C] -> [B, Q, 4]``) has a zero last layer. The
        subclass copies or shares them per decoder layer.
        """
        class_head = nn.Linear(self.embed_dim, self.num_classes)
        box_head = MLP(self.embed_dim, self.embed_dim, 4, 3)
        nn.init.constant_(class_head.bias, -math.log((1 - CLASS_PRIOR_PROB) / CLASS_PRIOR_PROB))
        nn.init.constant_(box_head.layers[-1].weight, 0.0)
        nn.init.constant_(box_head.layers[-1].bias, 0.0)
        return class_head, box_head

    def init_neck_weights(self) -> None:
        """Xavier-uniform weights and zero biases for the neck's convolutions (detrex does this
        right after creating the heads; keep that order to reproduce its random draws)."""
        for module in self.neck.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.xavier_uniform_(module.weight, gain=1)
                if module.bias is not None:
                    nn.init.constant_(module.bias, 0.0)

    # ------------------------------------------------------------------ network

    def multi_level_inputs(
        self, images: ImageList, padding_mask: Tensor
    ) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        """Feature maps, their padding masks and position embeddings, one per level.

        Args:
            images: normalized batch, ``images.tensor`` is ``[B, 3, H, W]``.
            padding_mask: ``[B, H, W]`` bool, True on padding.

        Returns:
            ``(feats, masks, pos_embeds)``: lists of ``[B, C, H_l, W_l]``, ``[B, H_l, W_l]``
            bool (the image mask at each level's stride) and ``[B, C, H_l, W_l]``.
        """
        features = self.backbone(images.tensor)
        multi_level_feats = self.neck(features)
        strides = self.level_strides(len(multi_level_feats))
        masks, pos_embeds = [], []
        for feat, stride in zip(multi_level_feats, strides, strict=True):
            masks.append(resize_padding_mask(padding_mask, feat.shape[-2:], stride))
            pos_embeds.append(self.position_embedding(masks[-1]).to(feat.dtype))
        return multi_level_feats, masks, pos_embeds

    def level_strides(self, num_levels: int) -> list[int | None]:
        """Each neck level's stride (``neck.output_shapes()``, as :class:`ChannelMapper` gives
        them), for exact padding masks; ``None`` where the neck does not say (nearest
        resizing, see :func:`~detr_ext.layers.resize_padding_mask`)."""
        shapes = self.neck.output_shapes() if hasattr(self.neck, "output_shapes") else []
        strides = [shape.stride for shape in shapes]
        return strides if len(strides) == num_levels else [None] * num_levels

    def layer_predictions(
        self, states: Tensor, init_reference: Tensor, references: Tensor
    ) -> tuple[list[Tensor], list[Tensor]]:
        """Class logits and boxes of every decoder layer, from ``class_embed`` / ``bbox_embed``.

        Layer ``i`` refines the reference it was given: the initial one for layer 0, else the
        reference after layer ``i - 1``. A box reference is a prior for the whole box; a point
        reference only for the center (the size comes from the head alone).

        Args:
            states: ``[num_layers, B, Q, C]`` decoder outputs.
            init_reference: ``[B, Q, 2 or 4]`` normalized points or ``cxcywh`` boxes.
            references: ``[num_layers, B, Q, 2 or 4]`` references after each layer.

        Returns:
            ``(classes, boxes)``: ``num_layers`` logits ``[B, Q, K]`` and boxes ``[B, Q, 4]``
            (normalized ``cxcywh``).
        """
        outputs_classes, outputs_coords = [], []
        for level in range(states.shape[0]):
            reference = init_reference if level == 0 else references[level - 1]
            reference = inverse_sigmoid(reference)
            outputs_classes.append(self.class_embed[level](states[level]))
            delta = self.bbox_embed[level](states[level])
            if reference.shape[-1] == 4:
                coord_unact = delta + reference
            else:
                coord_unact = torch.cat([delta[..., :2] + reference, delta[..., 2:]], -1)
            outputs_coords.append(coord_unact.sigmoid())
        return outputs_classes, outputs_coords

    def layer_outputs(
        self,
        outputs_class: Tensor | Sequence[Tensor],
        outputs_coord: Tensor | Sequence[Tensor],
    ) -> dict[str, Any]:
        """Per-layer predictions -> ``{"pred_logits", "pred_boxes", "aux_outputs"}``.

        Args:
            outputs_class: ``num_layers`` logits ``[B, Q, K]`` (stacked or a sequence).
            outputs_coord: ``num_layers`` boxes ``[B, Q, 4]``, likewise.

        Returns:
            the last layer's ``pred_logits`` and ``pred_boxes``, and with ``aux_loss`` the
            earlier layers' as a list ``aux_outputs`` of such dicts.
        """
        outputs: dict[str, Any] = {
            "pred_logits": outputs_class[-1],
            "pred_boxes": outputs_coord[-1],
        }
        if self.aux_loss:
            outputs["aux_outputs"] = [
                {"pred_logits": logits, "pred_boxes": boxes}
                for logits, boxes in zip(outputs_class[:-1], outputs_coord[:-1], strict=True)
            ]
        return outputs

    def inference(
        self, outputs: Mapping[str, Any], image_sizes: Sequence[tuple[int, int]]
    ) -> list[Instances]:
        """Top ``select_box_nums_for_evaluation`` (query, class) pairs by sigmoid score."""
        return self.inference_sigmoid_topk(
            outputs["pred_logits"], outputs["pred_boxes"], image_sizes
        )

    def inference_tensors(self, outputs: Mapping[str, Any]) -> tuple[Tensor, Tensor, Tensor]:
        """What :meth:`inference` wraps: ``(scores [B, D], labels [B, D], boxes [B, D, 4])``
        for the top ``D = select_box_nums_for_evaluation`` pairs
        (:meth:`DetectorBase.sigmoid_topk_predictions`)."""
        return self.sigmoid_topk_predictions(outputs["pred_logits"], outputs["pred_boxes"])
