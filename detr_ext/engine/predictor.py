"""Inference on single images outside a data loader: :class:`Predictor` runs a detector built
from a LazyConfig on an image array, :func:`draw_predictions` draws its detections (boxes,
instance masks, panoptic segments) with detectron2's ``Visualizer``. The json-ready forms
(:func:`instances_to_dicts`, :func:`panoptic_to_dicts`, :func:`mask_to_rle`) live in
:mod:`detr_ext.engine.detections_json` and are importable from here too. Used by
``tools/demo.py`` and ``tools/train_shapes_demo.py``."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from detectron2.config import LazyConfig, instantiate
from detectron2.data import DatasetCatalog, Metadata, MetadataCatalog
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.structures import Instances
from omegaconf import DictConfig

from ..checkpoint.loading import ema_weights_requested, load_model_weights
from ..data.aug_input import ClampedAugInput
from ..data.image_io import read_image_file
from .checks import check_num_classes
from .detections_json import (
    contiguous_to_dataset_ids,
    instances_to_dicts,
    mask_to_rle,
    panoptic_to_dicts,
)
from .input_format import check_input_format, config_node, mapper_image_options
from .prompted import text_prompted_model

__all__ = [
    "Predictor",
    "check_image",
    "contiguous_to_dataset_ids",
    "draw_predictions",
    "instances_to_dicts",
    "mask_to_rle",
    "mapper_image_options",
    "metadata_for_config",
    "panoptic_to_dicts",
]

logger = logging.getLogger(__name__)


def _resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            f"Predictor: device {str(device)!r} was requested, but torch.cuda.is_available() "
            "is False; use device 'cpu'"
        )
    return device


def metadata_for_config(cfg: DictConfig) -> Metadata:
    """The ``MetadataCatalog`` entry of the (first) dataset in ``cfg.dataloader.test.dataset``.

    Datasets registered with ``register_coco_instances`` only get ``thing_classes`` once they
    are loaded; in that case the dataset is loaded here (once) so that class names are known.
    """
    names = config_node(cfg, "dataloader.test.dataset.names")
    name = names if isinstance(names, str) else list(names)[0]
    metadata = MetadataCatalog.get(name)
    if not metadata.get("thing_classes") and name in DatasetCatalog.list():
        logger.info("Loading dataset %r to learn its class names.", name)
        DatasetCatalog.get(name)
        metadata = MetadataCatalog.get(name)
    return metadata


def check_image(image: Any, where: str, channels: int = 3) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != channels:
        got = image.shape if isinstance(image, np.ndarray) else type(image).__name__
        raise ValueError(f"{where}: expected an image array of shape [H, W, {channels}], got {got}")
    if image.dtype != np.uint8:
        raise ValueError(f"{where}: expected a uint8 image, got dtype {image.dtype}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(
            f"{where}: expected an image of at least 1 x 1 px, got shape {image.shape}"
        )
    return image


class Predictor:
    """A detector built from a LazyConfig, ready to run on one image at a time.

    The model is ``instantiate(cfg.model)`` with the weights of ``weights`` (loaded by
    :func:`~detr_ext.checkpoint.load_model_weights`: a checkpoint whose tensors do not fit
    the model is an error), in eval mode. Each image goes through the config's test-time
    augmentation, ``cfg.dataloader.test.mapper.augmentation``, as in evaluation, and the
    detections are resized back to the image's own size.

    Args:
        cfg: a LazyConfig, or the path of a LazyConfig file, with ``model`` and
            ``dataloader.test`` (``mapper.augmentation``, ``mapper.img_format``,
            ``dataset.names``).
        weights: a checkpoint path (or a URL detectron2's checkpointer understands).
        device: e.g. ``"cpu"``, ``"cuda"``; default: CUDA when available, else the CPU.
        ema_weights: run the checkpoint's EMA weights (True) or its model weights (False);
            default (None): as ``--eval-only`` evaluates, the EMA weights when the config
            has ``train.ema.enabled`` and ``train.ema.use_ema_weights_for_eval_only``.

    Raises:
        CheckpointMismatchError: a tensor of ``weights`` has another shape than the model's
            (e.g. a class head trained with another ``model.num_classes``), or ``weights``
            has none of the model's keys or lacks some of them, or no EMA weights when they
            are asked for.
        ValueError: the model has fewer classes than the test dataset has categories.

    Attributes:
        input_format: ``"RGB"`` or ``"BGR"``, the channel order images must be given in
            (the test mapper's ``img_format``).
        apply_exif_orientation: whether :meth:`read_image` rotates an image as its EXIF
            orientation says (the test mapper's ``apply_exif_orientation``, default True).
        metadata: the test dataset's metadata (``thing_classes``, id mapping).

    Example::

        predictor = Predictor("projects/dino/configs/dino_shapes.py", "model_final.pth")
        image = predictor.read_image("shapes.jpg")  # [H, W, 3] uint8, predictor.input_format
        instances = predictor(image)  # pred_boxes (xyxy), scores, pred_classes; on the CPU
    """

    def __init__(
        self,
        cfg: DictConfig | str | os.PathLike,
        weights: str | os.PathLike,
        device: str | torch.device | None = None,
        ema_weights: bool | None = None,
    ) -> None:
        if not isinstance(cfg, DictConfig):
            if not os.path.isfile(cfg):
                raise FileNotFoundError(
                    f"Predictor: expected a LazyConfig file or a loaded config, got missing "
                    f"path {os.fspath(cfg)!r}"
                )
            cfg = LazyConfig.load(os.fspath(cfg))
        weights = os.fspath(weights)
        if not weights:
            raise ValueError("Predictor: expected a checkpoint path in weights, got ''")
        if "://" not in weights and not os.path.isfile(weights):
            raise FileNotFoundError(
                f"Predictor: expected a checkpoint file in weights, got missing path {weights!r}"
            )
        self.cfg = cfg
        self.device = _resolve_device(device)

        try:
            self.input_format, self.apply_exif_orientation = mapper_image_options(cfg)
            check_input_format(cfg, splits=("test",))
        except ValueError as error:
            raise ValueError(f"Predictor: {error}") from error
        augmentation = config_node(cfg, "dataloader.test.mapper.augmentation")
        self.augmentation = T.AugmentationList(list(instantiate(augmentation)))
        self.metadata = metadata_for_config(cfg)

        self.model = instantiate(cfg.model)
        self.model.to(self.device)
        self.model.eval()
        # Fails on a checkpoint that does not fit (e.g. another num_classes) instead of
        # detectron2's warning and randomly initialised heads.
        if ema_weights is None:
            ema_weights = ema_weights_requested(cfg)
        load_model_weights(self.model, weights, where="Predictor", ema=bool(ema_weights))
        # A text-prompted model detects the test set's categories without a prompt, as in
        # evaluation, so that class k is the k-th name of self.metadata (drawn, and mapped to
        # its category id in detections.json).
        test_names = self.metadata.get("thing_classes", None)
        if text_prompted_model(self.model) is None or not test_names:
            check_num_classes(cfg, self.model, splits=("test",))
        else:
            self.model.set_category_names(list(test_names))

    def read_image(self, path: str | os.PathLike) -> np.ndarray:
        """Read an image file as the config's test mapper does, as ``[H, W, 3]`` uint8 in
        :attr:`input_format`: its EXIF orientation applied unless the mapper has
        ``apply_exif_orientation=False`` (:attr:`apply_exif_orientation`), so that the
        detections are in the frame the evaluation scores. An unreadable or truncated file
        raises :class:`~detr_ext.data.ImageReadError` (an ``OSError``) naming it."""
        return read_image_file(
            path, format=self.input_format, apply_exif_orientation=self.apply_exif_orientation
        )

    def to_rgb(self, image: np.ndarray) -> np.ndarray:
        """An image in :attr:`input_format` as RGB, for drawing."""
        return utils.convert_image_to_rgb(image, self.input_format)

    @torch.no_grad()
    def __call__(self, image: np.ndarray, prompt: str | None = None) -> Instances:
        """Detect objects in ``image``; :meth:`predict` without the phrases.

        Returns:
            ``Instances`` of size ``(H, W)`` on the CPU, with ``pred_boxes`` (absolute ``xyxy``
            in the image), ``scores`` and ``pred_classes`` (contiguous class indices, or
            phrase indices for a text-prompted model).
        """
        return self.predict(image, prompt)[0]

    @torch.no_grad()
    def predict(
        self, image: np.ndarray, prompt: str | None = None
    ) -> tuple[Instances, list[str] | None]:
        """Detect objects in ``image``, optionally those named by a text ``prompt``.

        Args:
            image: ``[H, W, 3]`` uint8 array in :attr:`input_format` channel order.
            prompt: phrases such as ``"red circle . triangle ."`` for a text-prompted model
                (Grounding DINO); None uses the model's default (its category names). A
                prompt for a model that does not read prompts is an error.

        Returns:
            ``(instances, phrases)``: the ``Instances`` of :meth:`__call__`, and for a
            text-prompted model the phrases its ``pred_classes`` index (else None).
        """
        outputs = self.predict_outputs(image, prompt)
        return outputs["instances"], outputs.get("phrases")

    @torch.no_grad()
    def predict_outputs(self, image: np.ndarray, prompt: str | None = None) -> dict[str, Any]:
        """The model's whole output for ``image`` (arguments as :meth:`predict`), on the CPU.

        Returns:
            ``{"instances": Instances}`` as :meth:`__call__` (with ``pred_masks`` bool
            ``[N, H, W]`` for a mask model), plus ``"phrases"`` for a text-prompted model and
            ``"panoptic_seg": (segment ids [H, W], segments_info)`` for a panoptic model.
        """
        image = check_image(image, "Predictor")
        if prompt is not None and not hasattr(self.model, "default_prompt"):
            raise ValueError(
                f"Predictor: a prompt was given but {type(self.model).__name__} does not read "
                "text prompts; expected a text-prompted model (e.g. GroundingDINO) or no prompt"
            )
        height, width = image.shape[:2]
        aug_input = ClampedAugInput(image)
        self.augmentation(aug_input)
        network_input = torch.as_tensor(np.ascontiguousarray(aug_input.image.transpose(2, 0, 1)))
        inputs = {"image": network_input.to(self.device), "height": height, "width": width}
        if prompt is not None:
            inputs["prompt"] = prompt
        output = dict(self.model([inputs])[0])
        output["instances"] = output["instances"].to("cpu")
        if "panoptic_seg" in output:
            segment_ids, segments_info = output["panoptic_seg"]
            output["panoptic_seg"] = (segment_ids.to("cpu"), segments_info)
        return output


def _panoptic_metadata(metadata: Metadata | None, segments_info: list[dict]) -> Metadata:
    """Metadata for ``Visualizer.draw_panoptic_seg``, which looks up a thing's name in
    ``thing_classes[category_id]`` and a stuff's in ``stuff_classes[category_id]``: with
    category ids contiguous over things and stuff together (detectron2's unified
    ``register_coco_panoptic`` metadata), both lists must be the unified one, ``stuff_classes``.
    Without names, ids are shown."""
    names = []
    if metadata is not None:
        names = list(metadata.get("stuff_classes", None) or metadata.get("thing_classes", []))
    largest_id = max((int(info["category_id"]) for info in segments_info), default=-1)
    if len(names) <= largest_id:
        names = [str(index) for index in range(largest_id + 1)]
    drawing = Metadata(name="panoptic_drawing", thing_classes=names, stuff_classes=names)
    colors = metadata.get("stuff_colors", None) if metadata is not None else None
    if colors and len(colors) == len(names):
        drawing.set(thing_colors=list(colors), stuff_colors=list(colors))
    return drawing


def _metadata_naming_every_class(
    metadata: Metadata | None, classes: torch.Tensor
) -> Metadata | None:
    """``metadata``, or for classes past its ``thing_classes`` (a model with more classes than
    the dataset has categories, see :func:`~detr_ext.engine.checks.check_num_classes`) a copy
    that names them ``"class <k>"``: the ``Visualizer`` looks every class up in
    ``thing_classes`` and fails with an IndexError on one it lacks."""
    names = list(metadata.get("thing_classes", None) or []) if metadata is not None else []
    largest = int(classes.max()) if len(classes) else -1
    if not names or largest < len(names):
        return metadata
    names += [f"class {index}" for index in range(len(names), largest + 1)]
    return Metadata(name=f"{metadata.name}+extra_classes", thing_classes=names)


def draw_predictions(
    image: np.ndarray,
    instances: Instances,
    metadata: Metadata | None = None,
    threshold: float = 0.5,
    phrases: Sequence[str] | None = None,
    panoptic_seg: tuple[torch.Tensor, list[dict]] | None = None,
) -> np.ndarray:
    """Draw the detections with ``score >= threshold`` (boxes, instance masks when
    ``instances`` has ``pred_masks``, class names or phrases, scores), or a panoptic
    segmentation, with detectron2's ``Visualizer``.

    Args:
        image: ``[H, W, 3]`` uint8 RGB image.
        instances: predictions for ``image`` (``pred_boxes``, ``scores``, ``pred_classes``,
            optional ``pred_masks`` bool ``[N, H, W]``), e.g. from :class:`Predictor`.
        metadata: gives the class names (``thing_classes``; ``stuff_classes`` for panoptic);
            class indices are shown without it, and ``"class <k>"`` for a class past its
            names (a model with more classes than the dataset has categories).
        threshold: minimum score of a drawn detection.
        phrases: the phrases ``pred_classes`` index (text-prompted models); drawn instead of
            the class names.
        panoptic_seg: ``(segment ids [H, W], segments_info)`` of a panoptic model
            (:meth:`Predictor.predict_outputs`): drawn instead of ``instances`` (as detectron2's
            demo does), every segment, named by its contiguous ``category_id``.

    Returns:
        ``[H, W, 3]`` uint8 RGB image with the detections drawn.
    """
    # Imported here: the Visualizer needs OpenCV, which nothing else in detr_ext does.
    from detectron2.utils.visualizer import ColorMode, Visualizer

    image = check_image(image, "draw_predictions")
    if panoptic_seg is not None:
        segment_ids, segments_info = panoptic_seg
        if tuple(segment_ids.shape) != image.shape[:2]:
            raise ValueError(
                f"draw_predictions: expected panoptic segment ids of the image's size "
                f"{image.shape[:2]}, got shape {tuple(segment_ids.shape)}"
            )
        visualizer = Visualizer(image, _panoptic_metadata(metadata, segments_info), scale=1.0)
        # The Visualizer adds "area" to the segment dicts: give it copies.
        segments = [dict(info) for info in segments_info]
        return visualizer.draw_panoptic_seg(segment_ids.cpu(), segments).get_image()
    instances = instances.to("cpu")
    kept = instances[instances.scores >= threshold]
    if phrases is not None:
        metadata = Metadata(name="prompt", thing_classes=list(phrases))
    else:
        metadata = _metadata_naming_every_class(metadata, kept.pred_classes)
    visualizer = Visualizer(image, metadata, scale=1.0, instance_mode=ColorMode.IMAGE)
    return visualizer.draw_instance_predictions(kept).get_image()
