"""``DINODetectorBase``: the network of DINO (Zhang et al., "DINO: DETR with Improved DeNoising
Anchor Boxes for End-to-End Object Detection", ICLR 2023), shared by the detectors built on it.

DINO is a two-stage deformable DETR with box refinement plus three changes: contrastive
denoising training (noised ground-truth queries, positives and negatives), mixed query
selection (anchors from the top encoder proposals, learned content queries) and "look forward
twice" box refinement. Parameter names, head sharing, initialisation and the forward
numerics follow detrex's ``DINO``, so detrex checkpoints give the same detections.

The class is not registered with detectron2's ``META_ARCH_REGISTRY``: each project registers
its own subclass (``projects/dino``: ``DINO``; ``projects/align_detr``: ``AlignDETR``, the same
network trained with another criterion), so that a project never imports another.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from detectron2.structures import ImageList
from torch import Tensor, nn

from detr_ext.layers import (
    CdnQueryGenerator,
    DINOTransformer,
    dn_post_process,
    keep_parameters_in_graph,
)

from .deformable_base import DeformableDetectorBase

__all__ = ["DINODetectorBase"]


class DINODetectorBase(DeformableDetectorBase):
    """Backbone -> neck (multi-scale maps) -> DINO transformer -> class / box heads: DINO's
    network, unregistered. Registered subclasses: ``projects.dino`` ``DINO`` and
    ``projects.align_detr`` ``AlignDETR`` (same network, another criterion).

    Takes the arguments of :class:`~detr_ext.modeling.DeformableDetectorBase` (``backbone``,
    ``position_embedding``, ``neck``, ``embed_dim``, ``num_classes``, ``criterion``, e.g. a
    :class:`~detr_ext.modeling.DINOCriterion`, ``pixel_mean``, ``pixel_std``, ``aux_loss``
    (which here also covers the denoising queries), ``input_format``, ``size_divisibility``),
    and:

    Args:
        transformer: a :class:`~detr_ext.layers.DINOTransformer` with
            ``two_stage_num_proposals == num_queries``.
        num_queries: matching queries (= encoder proposals kept).
        select_box_nums_for_evaluation: detections per image at inference (300 in DINO).
        dn_number: about how many positive denoising queries per image (0 disables
            denoising); see :func:`detr_ext.layers.prepare_for_cdn`.
        label_noise_ratio: denoising labels are flipped with probability ratio / 2.
        box_noise_scale: denoising box noise, in half box sizes.

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
        transformer: DINOTransformer,
        num_queries: int,
        select_box_nums_for_evaluation: int = 300,
        dn_number: int = 100,
        label_noise_ratio: float = 0.5,
        box_noise_scale: float = 1.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            transformer=transformer,
            num_queries=num_queries,
            select_box_nums_for_evaluation=select_box_nums_for_evaluation,
            **kwargs,
        )
        if transformer.two_stage_num_proposals != num_queries:
            raise ValueError(
                f"{type(self).__name__}: num_queries={num_queries} but "
                f"transformer.two_stage_num_proposals={transformer.two_stage_num_proposals}; "
                "DINO keeps one proposal per query"
            )
        self.label_enc = nn.Embedding(self.num_classes, self.embed_dim)
        self.denoising = CdnQueryGenerator(
            num_classes=self.num_classes,
            dn_number=dn_number,
            label_noise_ratio=label_noise_ratio,
            box_noise_scale=box_noise_scale,
        )
        self._build_heads()

    def _build_heads(self) -> None:
        """One class / box head per decoder layer plus one for the encoder proposals.

        Initialised as in detrex (see :meth:`new_prediction_heads` and
        :meth:`init_neck_weights`) and shared with the decoder, which refines boxes and
        selects proposals with them.
        """
        class_head, box_head = self.new_prediction_heads()
        self.init_neck_weights()
        num_pred = self.transformer.decoder.num_layers + 1
        self.class_embed = nn.ModuleList(copy.deepcopy(class_head) for _ in range(num_pred))
        self.bbox_embed = nn.ModuleList(copy.deepcopy(box_head) for _ in range(num_pred))
        self.transformer.decoder.class_embed = self.class_embed
        self.transformer.decoder.bbox_embed = self.bbox_embed

    # ------------------------------------------------------------------ network

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
            # label_enc is used by denoising queries only: none when a batch has no objects.
            states = keep_parameters_in_graph(states, self.label_enc)

        outputs_classes, outputs_coords = self.layer_predictions(states, init_reference, references)
        outputs_class, outputs_coord, dn_class, dn_coord = dn_post_process(
            torch.stack(outputs_classes),
            torch.stack(outputs_coords),
            None if dn is None else dn.dn_meta,
        )

        outputs: dict[str, Any] = self.layer_outputs(outputs_class, outputs_coord)
        outputs["enc_outputs"] = {
            "pred_logits": self.class_embed[-1](enc_states),
            "pred_boxes": enc_boxes,
        }
        if dn is not None:
            outputs["dn_outputs"] = self.layer_outputs(dn_class, dn_coord)
            outputs["dn_meta"] = dn.dn_meta
        return outputs
