"""``DetectorBase``: detectron2's model I/O contract, shared by the DETR-family detectors.

A concrete detector (DETR, Deformable DETR, DINO, ...) subclasses :class:`DetectorBase` and
implements two hooks:

- :meth:`DetectorBase.forward_outputs` runs backbone, transformer and heads on the normalized,
  padded batch and returns the prediction dict (``pred_logits``, ``pred_boxes``, and whatever
  its criterion needs, e.g. ``aux_outputs``);
- :meth:`DetectorBase.inference` turns that dict into per-image ``Instances`` in the frame of
  the network input, usually with :meth:`DetectorBase.inference_softmax` (DETR) or
  :meth:`DetectorBase.inference_sigmoid_topk` (Deformable DETR, DINO).

Everything at the detectron2 boundary lives here: input normalization and padding
(:meth:`~DetectorBase.preprocess_image`), ground truth to normalized ``cxcywh`` targets
(:meth:`~DetectorBase.prepare_targets`), and resizing predictions back to the original image
(:meth:`~DetectorBase.postprocess`). :meth:`~DetectorBase.compute_losses` calls
``self.criterion(outputs, targets)`` (the criterion applies its own ``weight_dict``); a
detector with extra loss inputs (e.g. DINO's denoising metadata) overrides it. The scoring
and decoding of the prediction dict are functions of :mod:`.predictions`, which the
``*_predictions`` / ``inference_*`` methods call.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from detectron2.modeling import detector_postprocess
from detectron2.structures import ImageList, Instances
from torch import Tensor, nn

from detr_ext.layers.box_ops import box_xyxy_to_cxcywh

from .output_checks import as_float32_detections, check_finite_detections
from .pixel_statistics import warn_on_backbone_normalization
from .predictions import (
    check_predictions,
    make_instances,
    sigmoid_topk_predictions,
    softmax_predictions,
)
from .target_checks import check_ground_truth, warn_on_more_objects_than_queries

__all__ = ["DetectorBase"]

INPUT_FORMATS = ("RGB", "BGR")


class DetectorBase(nn.Module):
    """Base class of DETR-family meta-architectures, following detectron2's model contract.

    ``forward(batched_inputs)`` takes a list of dicts, one per image, with

    - ``"image"``: ``[C, H, W]`` uint8 or float tensor in ``input_format`` channel order (the
      network input, i.e. after the mapper's resizing);
    - ``"instances"`` (training): ``Instances`` with ``gt_boxes`` (absolute ``xyxy`` in the
      input frame) and ``gt_classes`` (contiguous ids in ``[0, num_classes)``);
    - ``"height"``, ``"width"`` (optional): the original image size predictions are resized to.

    In training it returns a dict of weighted scalar losses; in inference a list of
    ``{"instances": Instances}`` with ``pred_boxes`` (absolute ``xyxy`` in the original image),
    ``scores`` and ``pred_classes``.

    Args:
        backbone: the image backbone, stored as ``self.backbone``; it is called by the
            subclass, which knows which feature maps it needs.
        num_classes: number of object classes ``K``.
        pixel_mean: per-channel mean, in the same channel order as the input images.
        pixel_std: per-channel standard deviation, same order.
        input_format: channel order of ``"image"``, ``"RGB"`` or ``"BGR"`` (recorded for
            tools such as demos; normalization uses ``pixel_mean`` / ``pixel_std`` as given).
        select_box_nums_for_evaluation: detections kept per image by
            :meth:`inference_sigmoid_topk`.
        size_divisibility: pad the batch so height and width are multiples of this (0: no
            extra padding beyond the largest image).
    """

    # gt_classes are checked against [0, num_classes) (False where they index a prompt).
    gt_classes_are_class_indices = True

    def __init__(
        self,
        *,
        backbone: nn.Module,
        num_classes: int,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        input_format: str = "RGB",
        select_box_nums_for_evaluation: int = 100,
        size_divisibility: int = 0,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        if num_classes < 1:
            raise ValueError(f"{name}: expected num_classes >= 1, got {num_classes}")
        if input_format not in INPUT_FORMATS:
            raise ValueError(
                f"{name}: expected input_format in {INPUT_FORMATS}, got {input_format!r}"
            )
        if len(pixel_mean) != len(pixel_std):
            raise ValueError(
                f"{name}: expected pixel_mean and pixel_std of equal length, got "
                f"{len(pixel_mean)} and {len(pixel_std)}"
            )
        if select_box_nums_for_evaluation < 1:
            raise ValueError(
                f"{name}: expected select_box_nums_for_evaluation >= 1, got "
                f"{select_box_nums_for_evaluation}"
            )
        if size_divisibility < 0:
            raise ValueError(f"{name}: expected size_divisibility >= 0, got {size_divisibility}")
        self.backbone = backbone
        self.num_classes = num_classes
        self.input_format = input_format
        self.select_box_nums_for_evaluation = select_box_nums_for_evaluation
        self.size_divisibility = size_divisibility
        # Not persistent: normalization constants belong to the config, not to checkpoints
        # (detrex checkpoints do not contain them).
        self.register_buffer(
            "pixel_mean", torch.tensor(pixel_mean, dtype=torch.float32).view(-1, 1, 1), False
        )
        self.register_buffer(
            "pixel_std", torch.tensor(pixel_std, dtype=torch.float32).view(-1, 1, 1), False
        )
        warn_on_backbone_normalization(name, backbone, pixel_mean, pixel_std, input_format)

    @property
    def device(self) -> torch.device:
        """The device the model lives on (that of ``pixel_mean``)."""
        return self.pixel_mean.device

    # ------------------------------------------------------------------ template

    def forward(self, batched_inputs: list[dict[str, Any]]) -> dict[str, Tensor] | list[dict]:
        """Losses in training, ``[{"instances": Instances}]`` in inference (see the class docs)."""
        images, padding_mask = self.preprocess_image(batched_inputs)
        targets = self.prepare_targets(batched_inputs) if self.training else None
        outputs = self.forward_outputs(images, padding_mask, targets)
        if self.training:
            return self.compute_losses(outputs, targets)
        results = self.inference(outputs, images.image_sizes)
        return self.postprocess(results, batched_inputs, images.image_sizes)

    def forward_outputs(
        self,
        images: ImageList,
        padding_mask: Tensor,
        targets: list[dict[str, Tensor]] | None,
    ) -> dict[str, Any]:
        """Run the network. Implemented by each detector.

        Args:
            images: normalized, padded batch; ``images.tensor`` is ``[B, C, H, W]`` and
                ``images.image_sizes[i]`` the ``(h_i, w_i)`` of image ``i`` before padding.
            padding_mask: ``[B, H, W]`` bool, True on padding.
            targets: the output of :meth:`prepare_targets` in training (e.g. for denoising
                queries), None in inference.

        Returns:
            the prediction dict, at least ``"pred_logits": [B, Q, K or K + 1]`` and
            ``"pred_boxes": [B, Q, 4]`` (normalized ``cxcywh``).
        """
        raise NotImplementedError(f"{type(self).__name__} must implement forward_outputs")

    def inference(
        self, outputs: Mapping[str, Any], image_sizes: Sequence[tuple[int, int]]
    ) -> list[Instances]:
        """Prediction dict -> one ``Instances`` per image in the input frame.

        Implemented by each detector, usually as :meth:`inference_softmax` or
        :meth:`inference_sigmoid_topk` of ``outputs["pred_logits"]`` and
        ``outputs["pred_boxes"]``.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement inference")

    def compute_losses(
        self, outputs: Mapping[str, Any], targets: list[dict[str, Tensor]]
    ) -> dict[str, Tensor]:
        """Weighted losses: ``self.criterion(outputs, targets)`` (which applies weight_dict)."""
        criterion = getattr(self, "criterion", None)
        if criterion is None:
            raise NotImplementedError(
                f"{type(self).__name__}: set self.criterion or override compute_losses"
            )
        return criterion(outputs, targets)

    # ------------------------------------------------------------------ inputs

    def preprocess_image(
        self, batched_inputs: Sequence[Mapping[str, Any]]
    ) -> tuple[ImageList, Tensor]:
        """Normalize the images and pad them into one batch.

        Args:
            batched_inputs: dicts with ``"image"``: ``[C, H_i, W_i]``.

        Returns:
            ``(images, padding_mask)``: ``images.tensor`` is ``[B, C, H, W]`` (zero-padded at
            the bottom and right, after normalization) and ``padding_mask`` is ``[B, H, W]``
            bool, True where a pixel is padding.
        """
        name = type(self).__name__
        num_channels = self.pixel_mean.shape[0]
        images = []
        for index, item in enumerate(batched_inputs):
            image = item.get("image") if isinstance(item, Mapping) else None
            if not isinstance(image, Tensor) or image.dim() != 3 or image.shape[0] != num_channels:
                got = (
                    f"shape {tuple(image.shape)}"
                    if isinstance(image, Tensor)
                    else type(image).__name__
                )
                raise ValueError(
                    f"{name}: batched_inputs[{index}]['image'] must be a [{num_channels}, H, W] "
                    f"tensor, got {got}"
                )
            # In the dtype of the normalization constants (the model's): a float64 image (from
            # a float64 numpy array) reached the float32 backbone as float64 and failed there.
            image = image.to(device=self.device, dtype=self.pixel_mean.dtype)
            images.append((image - self.pixel_mean) / self.pixel_std)
        images = ImageList.from_tensors(images, self.size_divisibility)
        batch_size, _, height, width = images.tensor.shape
        padding_mask = torch.ones(
            (batch_size, height, width), dtype=torch.bool, device=images.tensor.device
        )
        for index, (image_height, image_width) in enumerate(images.image_sizes):
            padding_mask[index, :image_height, :image_width] = False
        return images, padding_mask

    def prepare_targets(
        self, batched_inputs: Sequence[Mapping[str, Any]]
    ) -> list[dict[str, Tensor]]:
        """Ground truth -> the criterion's targets.

        Boxes are divided by ``[w, h, w, h]`` of the network input (``instances.image_size``,
        the image before batch padding), as in detrex.

        Returns:
            one dict per image: ``"labels"``: int64 ``[n]``, ``"boxes"``: ``[n, 4]``
            normalized ``cxcywh``.
        """
        targets = []
        for index, item in enumerate(batched_inputs):
            instances = item.get("instances")
            num_classes = self.num_classes if self.gt_classes_are_class_indices else None
            image = item.get("image")
            image_size = tuple(image.shape[-2:]) if isinstance(image, Tensor) else None
            check_ground_truth(instances, index, num_classes, type(self).__name__, image_size)
            num_queries = getattr(self, "num_queries", None)
            warn_on_more_objects_than_queries(
                len(instances), num_queries, index, type(self).__name__
            )
            instances = instances.to(self.device)
            height, width = instances.image_size
            scale = torch.as_tensor(
                [width, height, width, height], dtype=torch.float32, device=self.device
            )
            boxes = box_xyxy_to_cxcywh(instances.gt_boxes.tensor / scale)
            targets.append({"labels": instances.gt_classes.to(torch.int64), "boxes": boxes})
        return targets

    # ------------------------------------------------------------------ outputs

    @staticmethod
    def _make_instances(
        scores: Tensor, labels: Tensor, boxes: Tensor, image_size: tuple[int, int]
    ) -> Instances:
        """Instances of one image in ``image_size`` (:func:`.predictions.make_instances`)."""
        return make_instances(scores, labels, boxes, image_size)

    def inference_tensors(self, outputs: Mapping[str, Any]) -> tuple[Tensor, Tensor, Tensor]:
        """The batch's detections as fixed-size tensors, before any ``Instances``.

        Implemented by each detector whose :meth:`inference` wraps exactly these tensors
        (usually :meth:`softmax_predictions` or :meth:`sigmoid_topk_predictions`); the
        exported inference graphs of :mod:`detr_ext.export` end here.

        Returns:
            ``(scores [B, D], labels [B, D] int64, boxes [B, D, 4])`` for ``D`` detections per
            image, boxes normalized ``cxcywh`` in the frame of each image before padding.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement inference_tensors")

    @staticmethod
    def softmax_predictions(logits: Tensor, boxes: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """DETR scoring: per query, the best class of the softmax without no-object
        (:func:`.predictions.softmax_predictions`; ``logits [B, Q, K + 1]``)."""
        return softmax_predictions(logits, boxes)

    def sigmoid_topk_predictions(
        self, logits: Tensor, boxes: Tensor, k: int | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Deformable DETR / DINO scoring: the ``k`` best (query, class) pairs per image
        (:func:`.predictions.sigmoid_topk_predictions`; ``logits [B, Q, K]``); ``k``
        defaults to ``select_box_nums_for_evaluation`` and is capped at ``Q * K``."""
        k = self.select_box_nums_for_evaluation if k is None else k
        return sigmoid_topk_predictions(logits, boxes, k)

    def inference_softmax(
        self, logits: Tensor, boxes: Tensor, image_sizes: Sequence[tuple[int, int]]
    ) -> list[Instances]:
        """DETR inference: per query, the best class of the softmax without no-object
        (:meth:`softmax_predictions`).

        Args:
            logits: ``[B, Q, K + 1]``, the last class being no-object.
            boxes: ``[B, Q, 4]`` normalized ``cxcywh``.
            image_sizes: ``B`` ``(h, w)`` of the network input before padding.

        Returns:
            ``B`` ``Instances`` with ``Q`` detections each (absolute ``xyxy``).
        """
        self._check_predictions(logits, boxes, image_sizes, "inference_softmax")
        return self._instances_per_image(self.softmax_predictions(logits, boxes), image_sizes)

    def inference_sigmoid_topk(
        self,
        logits: Tensor,
        boxes: Tensor,
        image_sizes: Sequence[tuple[int, int]],
        k: int | None = None,
    ) -> list[Instances]:
        """Deformable DETR / DINO inference: the ``k`` best (query, class) pairs per image
        (:meth:`sigmoid_topk_predictions`).

        Args:
            logits: ``[B, Q, K]``.
            boxes: ``[B, Q, 4]`` normalized ``cxcywh``.
            image_sizes: ``B`` ``(h, w)`` of the network input before padding.
            k: detections per image; defaults to ``select_box_nums_for_evaluation`` and is
                capped at ``Q * K``.

        Returns:
            ``B`` ``Instances`` with ``k`` detections each, by decreasing score.
        """
        self._check_predictions(logits, boxes, image_sizes, "inference_sigmoid_topk")
        return self._instances_per_image(
            self.sigmoid_topk_predictions(logits, boxes, k), image_sizes
        )

    def _instances_per_image(
        self, predictions: tuple[Tensor, Tensor, Tensor], image_sizes: Sequence[tuple[int, int]]
    ) -> list[Instances]:
        scores, labels, boxes = predictions
        return [
            self._make_instances(*per_image)
            for per_image in zip(scores, labels, boxes, image_sizes, strict=True)
        ]

    def _check_predictions(
        self,
        logits: Tensor,
        boxes: Tensor,
        image_sizes: Sequence[tuple[int, int]],
        where: str,
    ) -> None:
        check_predictions(logits, boxes, image_sizes, f"{type(self).__name__}.{where}")

    def postprocess(
        self,
        results: Sequence[Instances],
        batched_inputs: Sequence[Mapping[str, Any]],
        image_sizes: Sequence[tuple[int, int]],
    ) -> list[dict[str, Instances]]:
        """Resize each image's detections from the input frame to its original size.

        The original size is ``(item["height"], item["width"])``, defaulting to the input size.
        Boxes are clipped to the image by ``detector_postprocess``. Scores and boxes are
        float32 whatever the model ran in (bfloat16 autocast or a ``.bfloat16()`` model gave
        bfloat16 scores, which numpy cannot take and which tie often).
        """
        processed = []
        for result, item, image_size in zip(results, batched_inputs, image_sizes, strict=True):
            height = item.get("height", image_size[0])
            width = item.get("width", image_size[1])
            check_finite_detections(result, item)
            as_float32_detections(result)
            processed.append({"instances": detector_postprocess(result, height, width)})
        return processed
