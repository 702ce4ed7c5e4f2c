"""DINO (Zhang et al., "DINO: DETR with Improved DeNoising Anchor Boxes for End-to-End Object
Detection", ICLR 2023) as a detectron2 meta-architecture.

DINO is a two-stage deformable DETR with box refinement plus three changes: contrastive
denoising training (noised ground-truth queries, positives and negatives), mixed query
selection (anchors from the top encoder proposals, learned content queries) and "look forward
twice" box refinement. Parameter names, head sharing, initialisation and the forward
numerics follow detrex's ``DINO``, so detrex checkpoints give the same detections (see
``projects/dino/checkpoint.py``).
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

from detr_ext.layers import MLP, CdnQueryGenerator, dn_post_process
from detr_ext.layers.box_ops import inverse_sigmoid
from detr_ext.modeling import DetectorBase

from .dino_transformer import DINOTransformer

__all__ = ["DINO"]


@META_ARCH_REGISTRY.register()
class DINO(DetectorBase):
    """Backbone -> neck (multi-scale maps) -> DINO transformer -> class / box heads.

    Args:
        backbone: returns a dict of feature maps, consumed by ``neck``.
        position_embedding: ``mask [B, H, W] -> [B, embed_dim, H, W]`` (sine, offset -0.5).
        neck: ``dict of maps -> list of num_feature_levels [B, embed_dim, H_l, W_l]``.
        transformer: a :class:`DINOTransformer` with ``two_stage_num_proposals ==
            num_queries``.
        embed_dim: model width ``C``.
        num_classes: object classes ``K`` (sigmoid / focal loss, no background logit).
        num_queries: matching queries (= encoder proposals kept).
        criterion: the training loss, e.g. :class:`DINOCriterion`; it applies its own
            ``weight_dict``.
        pixel_mean, pixel_std: input normalization, in the input's channel order.
        aux_loss: also supervise the earlier decoder layers (matching and denoising).
        select_box_nums_for_evaluation: detections per image at inference (300 in DINO).
        dn_number: about how many positive denoising queries per image (0 disables
            denoising); see :func:`detr_ext.layers.prepare_for_cdn`.
        label_noise_ratio: denoising labels are flipped with probability ratio / 2.
        box_noise_scale: denoising box noise, in half box sizes.
        input_format: channel order of the input images.
        size_divisibility: pad batches to a multiple of this.

    Outputs of :meth:`forward_outputs` (boxes normalized ``cxcywh``):
        ``pred_logits [B, Q, K]``, ``pred_boxes [B, Q, 4]`` of the last decoder layer;
        ``aux_outputs`` (with ``aux_loss``): the same for the earlier layers;
        ``enc_outputs``: the ``Q`` selected encoder proposals; and in training with targets,
        ``dn_outputs`` (``pred_logits [B, P, K]``, ``pred_boxes [B, P, 4]``, ``aux_outputs``)
        for the ``P`` denoising queries, with ``dn_meta`` (``pad_size``, ``num_dn_group``).
    """

    def __init__(
        self,
        *,
        backbone: nn.Module,
        position_embedding: nn.Module,
        neck: nn.Module,
        transformer: DINOTransformer,
        embed_dim: int,
        num_classes: int,
        num_queries: int,
        criterion: nn.Module,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        aux_loss: bool = True,
        select_box_nums_for_evaluation: int = 300,
        dn_number: int = 100,
        label_noise_ratio: float = 0.5,
        box_noise_scale: float = 1.0,
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
        if transformer.embed_dim != embed_dim:
            raise ValueError(
                f"{name}: embed_dim={embed_dim} but the transformer has embed_dim="
                f"{transformer.embed_dim}"
            )
        if transformer.two_stage_num_proposals != num_queries:
            raise ValueError(
                f"{name}: num_queries={num_queries} but transformer.two_stage_num_proposals="
                f"{transformer.two_stage_num_proposals}; DINO keeps one proposal per query"
            )
        self.position_embedding = position_embedding
        self.neck = neck
        self.transformer = transformer
        self.embed_dim = embed_dim
        self.num_queries = num_queries
        self.criterion = criterion
        self.aux_loss = aux_loss
        self.label_enc = nn.Embedding(num_classes, embed_dim)
        self.denoising = CdnQueryGenerator(
            num_classes=num_classes,
            dn_number=dn_number,
            label_noise_ratio=label_noise_ratio,
            box_noise_scale=box_noise_scale,
        )
        self._build_heads(embed_dim, num_classes)

    def _build_heads(self, embed_dim: int, num_classes: int) -> None:
        """One class / box head per decoder layer plus one for the encoder proposals.

        Initialised as in detrex (prior probability 0.01 for the class bias, zero last box
        layer, Xavier-uniform neck convolutions) and shared with the decoder, which refines
        boxes and selects proposals with them.
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
        num_pred = self.transformer.decoder.num_layers + 1
        self.class_embed = nn.ModuleList(copy.deepcopy(class_head) for _ in range(num_pred))
        self.bbox_embed = nn.ModuleList(copy.deepcopy(box_head) for _ in range(num_pred))
        self.transformer.decoder.class_embed = self.class_embed
        self.transformer.decoder.bbox_embed = self.bbox_embed

    # ------------------------------------------------------------------ network

    def multi_level_inputs(
        self, images: ImageList, padding_mask: Tensor
    ) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        """Feature maps, their padding masks and position embeddings, one per level.

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
        """Predictions of every decoder layer, the encoder proposals and the denoising queries.

        See the class docstring for the returned keys and shapes.
        """
        feats, masks, pos_embeds = self.multi_level_inputs(images, padding_mask)
        dn = None
        if targets is not None:
            dn = self.denoising(targets, self.label_enc, self.num_queries)
        states, init_reference, references, enc_states, enc_boxes = self.transformer(
            feats,
            masks,
            pos_embeds,
            dn_query_label=None if dn is None else dn.query_label,
            dn_query_bbox=None if dn is None else dn.query_bbox,
            attn_mask=None if dn is None else dn.attn_mask,
        )
        if self.training:
            # Keeps label_enc in the graph when a batch has no denoising queries (DDP).
            states = states + self.label_enc.weight[0, 0] * 0.0

        outputs_classes, outputs_coords = [], []
        for level in range(states.shape[0]):
            reference = init_reference if level == 0 else references[level - 1]
            outputs_classes.append(self.class_embed[level](states[level]))
            delta = self.bbox_embed[level](states[level])
            outputs_coords.append((delta + inverse_sigmoid(reference)).sigmoid())
        outputs_class, outputs_coord, dn_class, dn_coord = dn_post_process(
            torch.stack(outputs_classes),
            torch.stack(outputs_coords),
            None if dn is None else dn.dn_meta,
        )

        outputs: dict[str, Any] = self._layer_outputs(outputs_class, outputs_coord)
        outputs["enc_outputs"] = {
            "pred_logits": self.class_embed[-1](enc_states),
            "pred_boxes": enc_boxes,
        }
        if dn is not None:
            outputs["dn_outputs"] = self._layer_outputs(dn_class, dn_coord)
            outputs["dn_meta"] = dn.dn_meta
        return outputs

    def _layer_outputs(self, outputs_class: Tensor, outputs_coord: Tensor) -> dict[str, Any]:
        """``[num_layers, B, Q, *]`` -> ``{"pred_logits", "pred_boxes", "aux_outputs"}``."""
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
