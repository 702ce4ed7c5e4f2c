"""``DETRSegmDetectorBase``: DETR with its segmentation head (``DETRsegm`` of Carion et al.,
2020): instance masks and panoptic segmentation.

On top of DETR's network, each query of the last decoder layer attends to the encoder memory
(``bbox_attention``, one map per head), and a small FPN-like convolutional head
(``mask_head``) turns those maps, the projected last feature and three finer backbone levels
into one mask logit map per query at stride 4. Training adds the mask losses of its criterion
(e.g. :class:`~detr_ext.modeling.criterions.SegmCriterion`'s focal and dice losses); inference
adds binary masks at the original image size and, with ``panoptic_on``, a panoptic
segmentation (:func:`~detr_ext.modeling.meta_arch.panoptic_inference.combine_panoptic`).

The module names ``bbox_attention`` and ``mask_head`` are facebookresearch/detr's, so its
panoptic checkpoints map by prefix. Unregistered: ``projects/detr`` registers ``DETRSegm``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from detectron2.modeling import detector_postprocess
from detectron2.structures import BitMasks, ImageList, Instances, PolygonMasks
from torch import Tensor, nn

from .detr_base import DETRDetectorBase
from .mask_resize import logits_and_masks_at_output_size
from .output_checks import as_float32_detections, check_finite_detections
from .panoptic_inference import combine_panoptic

__all__ = ["DETRSegmDetectorBase"]

_MASK_MODULES = ("bbox_attention", "mask_head")


# (padded input size, image size in it, original size) of one image at inference.
_Frame = tuple[tuple[int, int], tuple[int, int], tuple[int, int]]


def _in_mask_modules(name: str) -> bool:
    """Whether parameter or module ``name`` belongs to ``bbox_attention`` or ``mask_head``."""
    return any(name == module or name.startswith(f"{module}.") for module in _MASK_MODULES)


class DETRSegmDetectorBase(DETRDetectorBase):
    """DETR + DETR's mask head: boxes, classes and one mask per query. Unregistered;
    registered subclass: ``projects.detr`` ``DETRSegm``.

    ``forward_outputs`` adds ``"pred_masks"``: ``[B, Q, H_2, W_2]`` mask logits at the
    resolution of ``mask_in_features[-1]`` (stride 4 for res2) in the padded batch frame, for
    the last decoder layer only. Training targets gain ``"masks"``: ``[n_i, H, W]`` bool, the
    ground-truth masks placed in the padded batch frame ``H x W``.

    Inference returns, per image, ``{"instances": Instances}`` as DETR (``pred_boxes``,
    ``scores``, ``pred_classes``) plus ``pred_masks``: ``[N, height, width]`` bool at the
    original size (logits upsampled bilinearly to the padded input, cropped to the image,
    resized to ``(height, width)``, then ``sigmoid > mask_threshold``; as detectron2's
    ``sem_seg_postprocess``), and with ``panoptic_on`` also ``"panoptic_seg"``:
    ``(Tensor[height, width] int32, segments_info)`` in detectron2's format, while
    ``instances`` keeps only the thing classes.

    Args:
        bbox_attention: :class:`~detr_ext.layers.MHAttentionMap`, ``(hidden states [B, Q,
            C], memory [B, C, h, w], mask [B, h, w]) -> [B, Q, heads, h, w]``.
        mask_head: :class:`~detr_ext.layers.MaskHeadSmallConv`, ``(features, attention
            maps, fpns) -> [B, Q, H_2, W_2]``.
        mask_in_features: the backbone features the mask head upsamples through, coarse to
            fine; the backbone must return them as well as ``in_features[-1]``.
        freeze_detector: DETR's stage-2 recipe (train the mask head on a trained detector):
            every parameter outside ``bbox_attention`` and ``mask_head`` gets
            ``requires_grad=False`` (so optimizers built from trainable parameters skip it),
            and BatchNorm layers outside them stay in eval mode. Dropout still follows
            ``train()``, as in facebookresearch/detr.
        mask_threshold: probability above which a pixel belongs to an instance mask.
        instance_on: return ``"instances"``.
        panoptic_on: also return ``"panoptic_seg"``.
        is_thing: per contiguous class, True for things, False for stuff; needed by
            ``panoptic_on``.
        panoptic_score_threshold: queries scoring at or below it are left out of the
            panoptic segmentation (DETR: 0.85).
        panoptic_overlap_threshold: a segment less visible than this fraction of its own
            mask is dropped.
        panoptic_min_area: segments of fewer pixels are dropped (5: those of at most 4 px,
            as DETR).
        **kwargs: the arguments of :class:`DETRDetectorBase`.
    """

    def __init__(
        self,
        *,
        bbox_attention: nn.Module,
        mask_head: nn.Module,
        mask_in_features: Sequence[str] = ("res4", "res3", "res2"),
        freeze_detector: bool = False,
        mask_threshold: float = 0.5,
        instance_on: bool = True,
        panoptic_on: bool = False,
        is_thing: Sequence[bool] | None = None,
        panoptic_score_threshold: float = 0.85,
        panoptic_overlap_threshold: float = 0.8,
        panoptic_min_area: int = 5,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        name = type(self).__name__
        self.mask_in_features = list(mask_in_features)
        self._check_backbone_features(mask_head)
        if not 0.0 < mask_threshold < 1.0:
            raise ValueError(f"{name}: expected mask_threshold in (0, 1), got {mask_threshold}")
        if not (instance_on or panoptic_on):
            raise ValueError(f"{name}: expected instance_on or panoptic_on (or both) to be True")
        if panoptic_on and (is_thing is None or len(is_thing) != self.num_classes):
            got = None if is_thing is None else f"{len(is_thing)} entries"
            raise ValueError(
                f"{name}: panoptic_on needs is_thing with one bool per class "
                f"({self.num_classes}), got {got}"
            )
        self.bbox_attention = bbox_attention
        self.mask_head = mask_head
        self.mask_threshold = mask_threshold
        self.instance_on = instance_on
        self.panoptic_on = panoptic_on
        self.is_thing = None if is_thing is None else [bool(value) for value in is_thing]
        self.panoptic_score_threshold = panoptic_score_threshold
        self.panoptic_overlap_threshold = panoptic_overlap_threshold
        self.panoptic_min_area = panoptic_min_area
        self.freeze_detector = freeze_detector
        if freeze_detector:
            for parameter_name, parameter in self.named_parameters():
                if not _in_mask_modules(parameter_name):
                    parameter.requires_grad_(False)
            self.train(self.training)

    def _check_backbone_features(self, mask_head: nn.Module) -> None:
        output_shape = getattr(self.backbone, "output_shape", None)
        if not callable(output_shape):
            return  # not a detectron2 Backbone: forward_outputs checks the names instead
        shapes = output_shape()
        needed = [*self.mask_in_features, self.in_features[-1]]
        missing = [feature for feature in needed if feature not in shapes]
        if missing:
            raise ValueError(
                f"{type(self).__name__}: the backbone must return mask_in_features "
                f"{self.mask_in_features} and in_features[-1] {self.in_features[-1]!r}; it "
                f"returns {sorted(shapes)}, missing {missing} (set backbone.out_features)"
            )
        fpn_dims = getattr(mask_head, "fpn_dims", None)
        channels = tuple(shapes[feature].channels for feature in self.mask_in_features)
        if fpn_dims is not None and tuple(fpn_dims) != channels:
            raise ValueError(
                f"{type(self).__name__}: mask_head.fpn_dims must be the channels of "
                f"mask_in_features {self.mask_in_features}, {channels}; got {tuple(fpn_dims)}"
            )

    def train(self, mode: bool = True) -> DETRSegmDetectorBase:
        """``nn.Module.train``, except that with ``freeze_detector`` the detector's BatchNorm
        layers stay in eval mode (their running statistics stay those of the trained
        detector)."""
        super().train(mode)
        if mode and getattr(self, "freeze_detector", False):
            for module_name, module in self.named_modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm) and not (
                    _in_mask_modules(module_name)
                ):
                    module.eval()
        return self

    # ------------------------------------------------------------------ training

    def prepare_targets(
        self, batched_inputs: Sequence[Mapping[str, Any]]
    ) -> list[dict[str, Tensor]]:
        """DETR's targets plus ``"masks"``: ``[n, H, W]`` bool in the padded batch frame
        (``H x W`` as :meth:`preprocess_image` pads the batch), from ``instances.gt_masks``
        (``BitMasks`` or ``PolygonMasks`` in the frame of ``instances.image_size``)."""
        targets = super().prepare_targets(batched_inputs)
        padded_height, padded_width = self.padded_batch_size(
            [tuple(item["image"].shape[-2:]) for item in batched_inputs]
        )
        for index, (item, target) in enumerate(zip(batched_inputs, targets, strict=True)):
            instances = item["instances"]
            height, width = instances.image_size
            if not instances.has("gt_masks"):
                raise ValueError(
                    f"{type(self).__name__}: training needs batched_inputs[{index}]['instances']"
                    ".gt_masks (BitMasks or PolygonMasks; the dataset mapper's mask_on=True), "
                    f"got fields {sorted(instances.get_fields())}"
                )
            masks = self._bit_masks(instances.gt_masks, height, width, index)
            padded = torch.zeros(
                (len(masks), padded_height, padded_width), dtype=torch.bool, device=self.device
            )
            padded[:, : masks.shape[1], : masks.shape[2]] = masks.to(self.device)
            target["masks"] = padded
        return targets

    def _bit_masks(self, gt_masks: Any, height: int, width: int, index: int) -> Tensor:
        if isinstance(gt_masks, PolygonMasks):
            return BitMasks.from_polygon_masks(gt_masks, height, width).tensor
        tensor = gt_masks.tensor if isinstance(gt_masks, BitMasks) else gt_masks
        if not isinstance(tensor, Tensor) or tuple(tensor.shape[1:]) != (height, width):
            got = tuple(tensor.shape) if isinstance(tensor, Tensor) else type(tensor).__name__
            raise ValueError(
                f"{type(self).__name__}: batched_inputs[{index}]['instances'].gt_masks must be "
                f"[n, {height}, {width}] (the instances' image_size), got {got}"
            )
        return tensor.bool()

    def padded_batch_size(self, image_sizes: Sequence[tuple[int, int]]) -> tuple[int, int]:
        """``(H, W)`` of the batch :meth:`preprocess_image` makes of images of
        ``image_sizes``: the largest, rounded up to ``size_divisibility`` (detectron2's
        ``ImageList.from_tensors``). :meth:`forward_outputs` checks it against the batch."""
        height = max(int(size[0]) for size in image_sizes)
        width = max(int(size[1]) for size in image_sizes)
        if self.size_divisibility > 1:
            stride = self.size_divisibility
            height, width = (-(-size // stride) * stride for size in (height, width))
        return height, width

    # ------------------------------------------------------------------ network

    def forward_outputs(
        self,
        images: ImageList,
        padding_mask: Tensor,
        targets: list[dict[str, Tensor]] | None,
    ) -> dict[str, Any]:
        """DETR's outputs plus ``"pred_masks"``: ``[B, Q, H_2, W_2]`` mask logits of the last
        decoder layer."""
        padded_size = self.padded_batch_size(images.image_sizes)
        if tuple(images.tensor.shape[-2:]) != padded_size:
            raise ValueError(
                f"{type(self).__name__}: expected a batch padded to {padded_size} "
                f"(padded_batch_size, which places target and predicted masks), got "
                f"{tuple(images.tensor.shape[-2:])}"
            )
        network = self.forward_network(images, padding_mask)
        outputs = self.head_outputs(network.hidden_states)
        missing = [f for f in self.mask_in_features if f not in network.backbone_features]
        if missing:
            raise ValueError(
                f"{type(self).__name__}: backbone output has no feature {missing} "
                f"(mask_in_features), got {sorted(network.backbone_features)}"
            )
        attention_maps = self.bbox_attention(
            network.hidden_states[-1], network.memory, mask=network.mask
        )  # [B, Q, heads, h, w]
        fpns = [network.backbone_features[feature] for feature in self.mask_in_features]
        outputs["pred_masks"] = self.mask_head(network.features, attention_maps, fpns)
        return outputs

    # ------------------------------------------------------------------ inference

    def inference(
        self, outputs: Mapping[str, Any], image_sizes: Sequence[tuple[int, int]]
    ) -> list[Instances]:
        """DETR's detections (one per query), each image's ``Instances`` carrying its
        ``pred_mask_logits``: ``[Q, H_2, W_2]`` in the padded frame, turned into masks by
        :meth:`postprocess` once the original size is known."""
        results = super().inference(outputs, image_sizes)
        for result, mask_logits in zip(results, outputs["pred_masks"], strict=True):
            result.pred_mask_logits = mask_logits
        return results

    def postprocess(
        self,
        results: Sequence[Instances],
        batched_inputs: Sequence[Mapping[str, Any]],
        image_sizes: Sequence[tuple[int, int]],
    ) -> list[dict[str, Any]]:
        """Per image: boxes through ``detector_postprocess`` as DETR, masks resized here
        (``detector_postprocess`` would paste ``pred_masks`` as box-relative ROI masks), and
        the panoptic segmentation with ``panoptic_on``. Each query's mask logits are resized
        to the original size at most once, for both outputs
        (:func:`~detr_ext.modeling.meta_arch.mask_resize.logits_and_masks_at_output_size`)."""
        padded_size = self.padded_batch_size(image_sizes)
        processed = []
        for result, item, image_size in zip(results, batched_inputs, image_sizes, strict=True):
            height = int(item.get("height", image_size[0]))
            width = int(item.get("width", image_size[1]))
            frame = (padded_size, tuple(image_size), (height, width))
            check_finite_detections(result, item)
            as_float32_detections(result)
            processed.append(self._postprocess_image(result, frame))
        return processed

    def _postprocess_image(self, result: Instances, frame: _Frame) -> dict[str, Any]:
        # combine_panoptic applies this threshold again; filtering here first bounds the float
        # logits held at the output size to the queries that can take part.
        panoptic_queries = torch.nonzero(result.scores > self.panoptic_score_threshold)[:, 0]
        panoptic_queries = panoptic_queries if self.panoptic_on else panoptic_queries[:0]
        instances, instance_queries = None, panoptic_queries[:0]
        if self.instance_on:
            instances, instance_queries = self._instances(result, frame[2])
        panoptic_logits, instance_masks = logits_and_masks_at_output_size(
            result.pred_mask_logits,
            panoptic_queries,
            instance_queries,
            *frame,
            mask_threshold=self.mask_threshold,
        )
        output: dict[str, Any] = {}
        if self.panoptic_on:
            output["panoptic_seg"] = combine_panoptic(
                panoptic_logits,
                result.scores[panoptic_queries],
                result.pred_classes[panoptic_queries],
                self.is_thing,
                score_threshold=self.panoptic_score_threshold,
                overlap_threshold=self.panoptic_overlap_threshold,
                min_area=self.panoptic_min_area,
                mask_threshold=self.mask_threshold,
            )
        if instances is not None:
            instances.pred_masks = instance_masks
            output["instances"] = instances
        return output

    def _instances(
        self, result: Instances, output_size: tuple[int, int]
    ) -> tuple[Instances, Tensor]:
        """``detector_postprocess`` of ``result`` without its mask logits (only the thing
        classes with ``panoptic_on``), and the query index of each instance kept."""
        fields = {k: v for k, v in result.get_fields().items() if k != "pred_mask_logits"}
        indexed = Instances(result.image_size, **fields)
        indexed.query_index = torch.arange(len(result), device=result.scores.device)
        instances = detector_postprocess(indexed, *output_size)
        if self.panoptic_on:
            is_thing = torch.as_tensor(self.is_thing, device=instances.pred_classes.device)
            instances = instances[is_thing[instances.pred_classes]]
        query_index = instances.query_index
        instances.remove("query_index")
        return instances, query_index
