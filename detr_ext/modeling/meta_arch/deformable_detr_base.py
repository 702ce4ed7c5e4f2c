"""``DeformableDETRDetectorBase``: the network of Deformable DETR (Zhu et al., "Deformable DETR:
Deformable Transformers for End-to-End Object Detection", ICLR 2021), for the detectors built
on it.

Three variants, chosen by two flags: the plain model (one box / class head shared by all
decoder layers, reference points from the learned queries), ``with_box_refine`` (one head per
layer; each layer refines the previous layer's box) and ``as_two_stage`` (on top of box
refinement, the queries come from the best encoder proposals). Parameter names, head sharing
and initialisation follow detrex, so detrex checkpoints load with an identity conversion.

The class is not registered with detectron2's ``META_ARCH_REGISTRY``: each project registers
its own subclass (``projects/deformable_detr``: ``DeformableDETR``; a project scaffolded with
``tools/new_project.py --base deformable_detr``), so that a project never imports another.
"""

from __future__ import annotations

import copy
from typing import Any

from detectron2.structures import ImageList
from torch import Tensor, nn

from detr_ext.layers import DeformableDetrTransformer

from .deformable_base import DeformableDetectorBase

__all__ = ["DeformableDETRDetectorBase"]


class DeformableDETRDetectorBase(DeformableDetectorBase):
    """Backbone -> neck (multi-scale maps) -> deformable transformer -> class / box heads:
    Deformable DETR's network, unregistered. Registered subclass: ``projects.deformable_detr``
    ``DeformableDETR``.

    Takes the arguments of :class:`~detr_ext.modeling.DeformableDetectorBase` (``backbone``,
    ``position_embedding``, ``neck``, ``num_classes``, ``criterion``, e.g. a
    :class:`~detr_ext.modeling.DeformableCriterion`, ``pixel_mean``, ``pixel_std``, ``aux_loss``,
    ``input_format``, ``size_divisibility``), and:

    Args:
        transformer: a :class:`~detr_ext.layers.DeformableDetrTransformer`; its
            ``as_two_stage`` must equal ``as_two_stage`` here.
        embed_dim: model width ``C``.
        num_queries: decoder queries (for two-stage, the number of proposals kept).
        with_box_refine: iterative bounding box refinement (one head per decoder layer).
        as_two_stage: two-stage Deformable DETR; requires ``with_box_refine``.
        select_box_nums_for_evaluation: detections per image at inference.

    Outputs of :meth:`forward_outputs` (all boxes normalized ``cxcywh``):
        ``pred_logits [B, Q, K]`` and ``pred_boxes [B, Q, 4]`` of the last decoder layer;
        ``aux_outputs`` (with ``aux_loss``): the same for the earlier layers; ``enc_outputs``
        (two-stage): ``pred_logits [B, N, K]`` and ``pred_boxes [B, N, 4]`` of all ``N``
        encoder proposals.
    """

    def __init__(
        self,
        *,
        transformer: DeformableDetrTransformer,
        embed_dim: int,
        num_queries: int,
        with_box_refine: bool = False,
        as_two_stage: bool = False,
        select_box_nums_for_evaluation: int = 100,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            transformer=transformer,
            embed_dim=embed_dim,
            num_queries=num_queries,
            select_box_nums_for_evaluation=select_box_nums_for_evaluation,
            # One-stage models learn their (positional, content) queries.
            query_embedding_dim=0 if as_two_stage else 2 * embed_dim,
            **kwargs,
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
        if as_two_stage and transformer.two_stage_num_proposals != num_queries:
            raise ValueError(
                f"{name}: two-stage keeps num_queries={num_queries} proposals, but "
                f"transformer.two_stage_num_proposals={transformer.two_stage_num_proposals}"
            )
        self.with_box_refine = with_box_refine
        self.as_two_stage = as_two_stage
        self._build_heads()

    def _build_heads(self) -> None:
        """Class / box heads per prediction level, initialised as in detrex.

        Without refinement one head pair is shared by all levels (the ModuleLists hold the
        same module repeatedly). With refinement every level has its own copy, and the decoder
        uses the box heads to refine its references; two-stage adds one more level, the
        encoder proposals, whose heads the transformer uses.
        """
        class_head, box_head = self.new_prediction_heads()
        self.init_neck_weights()

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
        outputs = self.layer_outputs(*self.layer_predictions(states, init_reference, references))
        if self.as_two_stage:
            outputs["enc_outputs"] = {
                "pred_logits": enc_class,
                "pred_boxes": enc_coord_unact.sigmoid(),
            }
        return outputs
