"""Predictor for an exported model: :class:`ExportedPredictor`, the
:class:`~detr_ext.engine.predictor.Predictor` of a ``.pt2`` / ``.onnx`` file, one
``[H, W, 3]`` image in, ``Instances`` out (``tools/demo.py --exported``)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from detectron2.data import Metadata
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.structures import Instances
from omegaconf import DictConfig

from ..data.aug_input import ClampedAugInput
from ..data.image_io import read_image_file
from ..engine.input_format import config_node, mapper_image_options
from ..engine.predictor import check_image, metadata_for_config
from .metadata import ExportMetadata
from .runners import load_exported

__all__ = ["ExportedPredictor"]


def _metadata_from_export(metadata: ExportMetadata) -> Metadata:
    classes = metadata.thing_classes or [str(index) for index in range(metadata.num_classes)]
    return Metadata(name=f"exported:{metadata.meta_architecture}", thing_classes=list(classes))


class ExportedPredictor:
    """:class:`~detr_ext.engine.predictor.Predictor` for an exported model: one image at a time.

    Images go through the test-time augmentation of ``cfg`` (as the Predictor does) or, without
    a config, the ``ResizeShortestEdge`` recorded at export (``metadata.test_resize``, none if
    the config's augmentation was something else), and the detections are resized back to the
    image's size. With the same config and the weights it was exported from, the detections
    equal the Predictor's up to the exported graph's float rounding.

    Args:
        path: an exported model (``.pt2`` or ``.onnx``).
        cfg: optional LazyConfig (or its path) for the test augmentation, ``img_format``,
            ``apply_exif_orientation`` (of ``dataloader.test.mapper``) and class names;
            without it, those recorded at export.
        **options: for :func:`load_exported`.

    Attributes:
        runner, input_format, apply_exif_orientation (whether :meth:`read_image` applies
        the EXIF orientation), metadata (detectron2 ``Metadata`` with ``thing_classes``).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        cfg: DictConfig | str | os.PathLike | None = None,
        **options: Any,
    ) -> None:
        self.runner = load_exported(path, **options)
        exported = self.runner.metadata
        if cfg is not None and not isinstance(cfg, DictConfig):
            from detectron2.config import LazyConfig

            cfg = LazyConfig.load(os.fspath(cfg))
        if cfg is not None:
            from detectron2.config import instantiate

            try:
                self.input_format, self.apply_exif_orientation = mapper_image_options(
                    cfg, default_format=exported.input_format
                )
            except ValueError as error:
                raise ValueError(f"ExportedPredictor: {error}") from error
            augmentation = list(
                instantiate(config_node(cfg, "dataloader.test.mapper.augmentation"))
            )
            self.metadata = metadata_for_config(cfg)
        else:
            self.input_format = exported.input_format
            self.apply_exif_orientation = exported.apply_exif_orientation
            augmentation = []
            if exported.test_resize:
                augmentation = [T.ResizeShortestEdge(**exported.test_resize)]
            self.metadata = _metadata_from_export(exported)
        self.augmentation = T.AugmentationList(augmentation)

    def read_image(self, path: str | os.PathLike) -> np.ndarray:
        """An image file as ``[H, W, 3]`` uint8 in :attr:`input_format`, read as the config's
        test mapper reads it (see :meth:`Predictor.read_image
        <detr_ext.engine.predictor.Predictor.read_image>`): EXIF orientation applied unless
        the mapper has ``apply_exif_orientation=False``; without a config, as recorded at
        export (``metadata.apply_exif_orientation``)."""
        return read_image_file(
            path, format=self.input_format, apply_exif_orientation=self.apply_exif_orientation
        )

    def to_rgb(self, image: np.ndarray) -> np.ndarray:
        """An image in :attr:`input_format` as RGB, for drawing."""
        return utils.convert_image_to_rgb(image, self.input_format)

    def __call__(self, image: np.ndarray, prompt: str | None = None) -> Instances:
        """``[H, W, 3]`` uint8 image in :attr:`input_format` -> ``Instances`` of size
        ``(H, W)`` on the CPU (``pred_boxes``, ``scores``, ``pred_classes``)."""
        return self.predict(image, prompt)[0]

    def predict(self, image: np.ndarray, prompt: str | None = None) -> tuple[Instances, None]:
        """``(instances, None)``: :meth:`__call__` in the form of ``Predictor.predict`` (an
        exported model has no text prompt, hence no phrases; giving one is an error)."""
        if prompt is not None:
            raise ValueError(
                f"ExportedPredictor: exported models take no text prompt, got {prompt!r}"
            )
        image = check_image(image, "ExportedPredictor")
        height, width = image.shape[:2]
        aug_input = ClampedAugInput(image)
        self.augmentation(aug_input)
        network_input = torch.as_tensor(np.ascontiguousarray(aug_input.image.transpose(2, 0, 1)))
        return self.runner.predict([network_input], [(height, width)])[0], None
