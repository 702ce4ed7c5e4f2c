"""Deformable DETR (Zhu et al., "Deformable DETR: Deformable Transformers for End-to-End
Object Detection", ICLR 2021) as a detectron2 meta-architecture.

Three variants, chosen by two flags: the plain model (one box / class head shared by all
decoder layers, reference points from the learned queries), ``with_box_refine`` (one head per
layer; each layer refines the previous layer's box) and ``as_two_stage`` (on top of box
refinement, the queries come from the best encoder proposals). Parameter names, head sharing
and initialisation follow detrex, so detrex checkpoints load with an identity conversion.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.structures import ImageList, Instances
from torch import Tensor, nn

from detr_ext.layers import MLP
from detr_ext.layers.box_ops import inverse_sigmoid
from detr_ext.modeling import DetectorBase

from .deformable_transformer import DeformableDetrTransformer

__all__ = ["DeformableDETR"]


@META_ARCH_REGISTRY.register()
class DeformableDETR(DetectorBase):
    """Backbone -> neck (multi-scale maps) -> deformable transformer -> class / box heads.

    Args:
        backbone: returns a dict of feature maps, consumed by ``neck``.
        position_embedding: ``mask [B, H, W] -> [B, embed_dim, H, W]`` (sine, offset -0.5).
        neck: ``dict of maps -> list of num_feature_levels [B, embed_dim, H_l, W_l]``.
        transformer: a :class:`DeformableDetrTransformer`; its ``as_two_stage`` must equal
            ``as_two_stage`` here.
        embed_dim: model width ``C``.
        num_classes: object classes ``K`` (sigmoid / focal loss, no background logit).
        num_queries: decoder queries (for two-stage, the number of proposals kept).
        criterion: the training loss, e.g. :class:`DeformableCriterion`; it applies its own
            ``weight_dict``.
        pixel_mean, pixel_std: input normalization, in the input's channel order.
        aux_loss: also supervise the outputs of every earlier decoder layer.
        with_box_refine: iterative bounding box refinement (one head per decoder layer).
        as_two_stage: two-stage Deformable DETR; requires ``with_box_refine``.
        select_box_nums_for_evaluation: detections per image at inference.
        input_format: channel order of the input images.
        size_divisibility: pad batches to a multiple of this.

    Outputs of :meth:`forward_outputs` (all boxes normalized ``cxcywh``):
        ``pred_logits [B, Q, K]`` and ``pred_boxes [B, Q, 4]`` of the last decoder layer;
        ``aux_outputs`` (with ``aux_loss``): the same for the earlier layers; ``enc_outputs``
        (two-stage): ``pred_logits [B, N, K]`` and ``pred_boxes [B, N, 4]`` of all ``N``
        encoder proposals.
    """

    def __init__(
        self,
        *,
        backbone: nn.Module,
        position_embedding: nn.Module,
        neck: nn.Module,
        transformer: DeformableDetrTransformer,
        embed_dim: int,
        num_classes: int,
        num_queries: int,
        criterion: nn.Module,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        aux_loss: bool = True,
        with_box_refine: bool = False,
        as_two_stage: bool = False,
        select_box_nums_for_evaluation: int = 100,
        input_format: str = "RGB",
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
        name = type(self).__name__
        if as_two_stage and not with_box_refine:
            raise ValueError(
                f"{name}: as_two_stage=True needs with_box_refine=True (the encoder proposals "
                "are scored by the extra per-layer heads of box refinement), got "
                "with_box_refine=False"
            )
        if transformer.as_two_stage != as_two_stage:
            raise ValueError(
                f"{name}: as_two_stage={as_two_stage} but transformer.as_two_stage="
                f"{transformer.as_two_stage}; set both to the same value"
            )
        if transformer.embed_dim != embed_dim:
            raise ValueError(
                f"{name}: embed_dim={embed_dim} but the transformer has embed_dim="
                f"{transformer.embed_dim}"
            )
        if as_two_stage and transformer.two_stage_num_proposals != num_queries:
            raise ValueError(
                f"{name}: two-stage keeps num_queries={num_queries} proposals, but "
                f"transformer.two_stage_num_proposals={transformer.two_stage_num_proposals}"
            )
        self.position_embedding = position_embedding
        self.neck = neck
        self.num_queries = num_queries
        if not as_two_stage:
            self.query_embedding = nn.Embedding(num_queries, embed_dim * 2)
        self.transformer = transformer
        self.embed_dim = embed_dim
        self.criterion = criterion
        self.aux_loss = aux_loss
        self.with_box_refine = with_box_refine
        self.as_two_stage = as_two_stage
        self._build_heads(embed_dim, num_classes)

    def _build_heads(self, embed_dim: int, num_classes: int) -> None:
        """Class / box heads per prediction level, initialised as in detrex.

        Without refinement one head pair is shared by all levels (the ModuleLists hold the
        same module repeatedly). With refinement every level has its own copy, and the decoder
        uses the box heads to refine its references; two-stage adds one more level, the
        encoder proposals, whose heads the transformer uses.
        """
        class_head = nn.Linear(embed_dim, num_classes)
        box_head = MLP(embed_dim, embed_dim, 4, 3)
        prior_prob = 0.01
        nn.init.constant_(class_head.bias, -math.log((1 - prior_prob) / prior_prob))
        nn.init.constant_(box_head.layers[-1].weight, 0.0)
        nn.init.constant_(box_head.layers[-1].bias, 0.0)
        for module in self.neck.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.xavier_uniform_(module.weight, gain=1)
                if module.bias is not None:
                    nn.init.constant_(module.bias, 0.0)

        decoder = self.transformer.decoder
        num_pred = decoder.num_layers + 1 if self.as_two_stage else decoder.num_layers
        if self.with_box_refine:
            self.class_embed = nn.ModuleList(copy.deepcopy(class_head) for _ in range(num_pred))
            self.bbox_embed = nn.ModuleList(copy.deepcopy(box_head) for _ in range(num_pred))
            nn.init.constant_(self.bbox_embed[0].layers[-1].bias.data[2:], -2.0)
            decoder.bbox_embed = self.bbox_embed
        else:
            nn.init.constant_(box_head.layers[-1].bias.data[2:], -2.0)
            self.class_embed = nn.ModuleList([class_head] * num_pred)
            self.bbox_embed = nn.ModuleList([box_head] * num_pred)
            decoder.bbox_embed = None
        if self.as_two_stage:
            decoder.class_embed = self.class_embed
            for head in self.bbox_embed:
                nn.init.constant_(head.layers[-1].bias.data[2:], 0.0)

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
            bool (the image mask resized by nearest neighbour) and ``[B, C, H_l, W_l]``.
        """
        features = self.backbone(images.tensor)
        multi_level_feats = self.neck(features)
        masks, pos_embeds = [], []
        for feat in multi_level_feats:
            mask = F.interpolate(padding_mask[None].float(), size=feat.shape[-2:])
            masks.append(mask.to(torch.bool)[0])
            pos_embeds.append(self.position_embedding(masks[-1]))
        return multi_level_feats, masks, pos_embeds

    def forward_outputs(
        self,
        images: ImageList,
        padding_mask: Tensor,
        targets: list[dict[str, Tensor]] | None,
    ) -> dict[str, Any]:
        """Predictions of every decoder layer (and of the encoder, for two-stage).

        See the class docstring for the returned keys and shapes.
        """
        feats, masks, pos_embeds = self.multi_level_inputs(images, padding_mask)
        query_embed = None if self.as_two_stage else self.query_embedding.weight
        states, init_reference, references, enc_class, enc_coord_unact = self.transformer(
            feats, masks, pos_embeds, query_embed
        )

        outputs_classes, outputs_coords = [], []
        for level in range(states.shape[0]):
            reference = init_reference if level == 0 else references[level - 1]
            reference = inverse_sigmoid(reference)
            logits = self.class_embed[level](states[level])
            delta = self.bbox_embed[level](states[level])
            if reference.shape[-1] == 4:
                coord_unact = delta + reference
            else:
                # A point reference gives the box center prior; size comes from the head only.
                coord_unact = torch.cat([delta[..., :2] + reference, delta[..., 2:]], -1)
            outputs_classes.append(logits)
            outputs_coords.append(coord_unact.sigmoid())

        outputs: dict[str, Any] = {
            "pred_logits": outputs_classes[-1],
            "pred_boxes": outputs_coords[-1],
        }
        if self.aux_loss:
            outputs["aux_outputs"] = [
                {"pred_logits": logits, "pred_boxes": boxes}
                for logits, boxes in zip(outputs_classes[:-1], outputs_coords[:-1], strict=True)
            ]
        if self.as_two_stage:
            outputs["enc_outputs"] = {
                "pred_logits": enc_class,
                "pred_boxes": enc_coord_unact.sigmoid(),
            }
        return outputs

    def inference(
        self, outputs: Mapping[str, Any], image_sizes: Sequence[tuple[int, int]]
    ) -> list[Instances]:
        """Top ``select_box_nums_for_evaluation`` (query, class) pairs by sigmoid score."""
        return self.inference_sigmoid_topk(
            outputs["pred_logits"], outputs["pred_boxes"], image_sizes
        )
