"""``DetrDatasetMapper``: turns a detectron2 dataset dict into the model's input dict, with the
DETR training recipe of choosing, per image, between a plain and a cropping augmentation."""

from __future__ import annotations

import copy
import logging
import random
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.structures import BitMasks, BoxMode, PolygonMasks

from .annotation_geometry import compressed_rle
from .aug_input import ClampedAugInput
from .image_io import (
    TRANSPOSING_ORIENTATIONS,
    HighBitDepthError,
    ImageReadError,
    exif_orientation,
    read_image_file,
)

__all__ = ["DetrDatasetMapper", "describe_image"]

IMAGE_FORMATS = ("RGB", "BGR")
MASK_FORMATS = ("auto", "polygon", "bitmask")
logger = logging.getLogger(__name__)
_LEFT_OUT_WARNINGS = 3  # annotations with degenerate polygon parts warned about, per mapper


def _augmentation_list(value: Any, argument: str) -> T.AugmentationList:
    # LazyConfig's instantiate returns ListConfig for lists, hence Sequence rather than list.
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        raise TypeError(
            f"DetrDatasetMapper: {argument} must be a list of detectron2 Augmentation or "
            f"Transform objects, got {type(value).__name__}"
        )
    for index, item in enumerate(value):
        if not isinstance(item, T.Augmentation | T.Transform):
            raise TypeError(
                f"DetrDatasetMapper: {argument}[{index}] must be a detectron2 Augmentation or "
                f"Transform, got {type(item).__name__}"
            )
    return T.AugmentationList(list(value))


class DetrDatasetMapper:
    """A detectron2 dataset mapper for DETR-family detectors.

    Reads the image, applies one of two ``detectron2.data.transforms`` pipelines and moves the
    annotations along with it. In training each image takes ``augmentation_with_crop`` with
    probability ``crop_probability`` (DETR's random-crop recipe) and ``augmentation`` otherwise;
    crowd annotations (``iscrowd=1``) are dropped before transforming, and boxes left empty by a
    crop are filtered out. At test time annotations are dropped.

    An image file that cannot be decoded (truncated, corrupt) raises ``ImageReadError`` naming
    the file and its ``image_id``.

    Input: a dataset dict as produced by ``load_coco_json`` (``file_name``, optional
    ``height`` / ``width``, ``annotations`` with ``bbox``, ``bbox_mode``, ``category_id``).

    Output: the same dict plus
      - ``image``: uint8 tensor [C, H', W'] in ``img_format`` channel order, after augmentation;
      - ``height``, ``width``: the original image size, to resize predictions back;
      - ``instances`` (training only): ``Instances`` of size (H', W') with ``gt_boxes``
        (absolute XYXY ``Boxes``), ``gt_classes`` (contiguous ids) and, with ``mask_on``,
        ``gt_masks``.

    With ``mask_on`` every non-crowd annotation needs a ``segmentation`` (COCO polygons, an RLE
    dict, compressed or not, or an [H, W] array; the last two are compressed first, the only
    dense form detectron2's transforms take); masks go through the same transforms as the image
    (``transform_instance_annotations``: polygons exactly, RLE / arrays as pixels with nearest
    interpolation), and instances whose mask or box a crop left empty are dropped. The boxes
    stay the transformed annotation boxes (clipped by a crop), as detectron2 does.

    Args:
        augmentation: Augmentations / Transforms used when no crop is taken (and at test time).
        augmentation_with_crop: the cropping pipeline; ``None`` means always ``augmentation``.
        is_train: whether to keep annotations and draw the random pipeline choice.
        mask_on: keep instance masks (``gt_masks``); otherwise segmentations are discarded.
        img_format: channel order of ``image``, ``"RGB"`` or ``"BGR"``.
        crop_probability: chance of ``augmentation_with_crop`` for a training image.
        mask_format: type of ``gt_masks``: ``"polygon"`` (``PolygonMasks``; every
            segmentation must be polygons), ``"bitmask"`` (``BitMasks``, [N, H', W'] bool) or
            ``"auto"``: polygons unless an annotation of the image has an RLE / array mask.
        apply_exif_orientation: rotate images as their EXIF orientation says (detectron2's
            default). Set False when the annotations were made on the stored pixels (labeling
            tools that ignore EXIF); an image whose EXIF rotation makes its size differ from
            the dataset's ``width`` / ``height`` is an error that says so.
        skip_unreadable_images: training only. An image file that cannot be read (missing,
            truncated, corrupt: :class:`~detr_ext.data.ImageReadError`) is left out with a
            warning naming it, and the loader takes another image in its place (detectron2's
            ``MapDataset`` retries when a mapper returns ``None``), instead of stopping the
            run. Off by default: ``tools/check_dataset.py`` finds such files before training.
            An evaluation mapper never skips (the scores would silently cover fewer images).
    """

    def __init__(
        self,
        augmentation: Sequence[T.Augmentation | T.Transform],
        augmentation_with_crop: Sequence[T.Augmentation | T.Transform] | None = None,
        is_train: bool = True,
        mask_on: bool = False,
        img_format: str = "RGB",
        crop_probability: float = 0.5,
        mask_format: str = "auto",
        apply_exif_orientation: bool = True,
        skip_unreadable_images: bool = False,
    ) -> None:
        if skip_unreadable_images and not is_train:
            raise ValueError(
                "DetrDatasetMapper: skip_unreadable_images is for training (is_train=True); an "
                "evaluation that skipped images would score fewer images without saying so"
            )
        if img_format not in IMAGE_FORMATS:
            raise ValueError(
                f"DetrDatasetMapper: img_format must be one of {IMAGE_FORMATS}, got {img_format!r}"
            )
        if not 0.0 <= crop_probability <= 1.0:
            raise ValueError(
                f"DetrDatasetMapper: crop_probability must be in [0, 1], got {crop_probability}"
            )
        if mask_format not in MASK_FORMATS:
            raise ValueError(
                f"DetrDatasetMapper: mask_format must be one of {MASK_FORMATS}, got {mask_format!r}"
            )
        self.augmentation = _augmentation_list(augmentation, "augmentation")
        self.augmentation_with_crop = (
            None
            if augmentation_with_crop is None
            else _augmentation_list(augmentation_with_crop, "augmentation_with_crop")
        )
        self.is_train = is_train
        self.mask_on = mask_on
        self.img_format = img_format
        self.crop_probability = crop_probability
        self.mask_format = mask_format
        self.apply_exif_orientation = bool(apply_exif_orientation)
        self.skip_unreadable_images = bool(skip_unreadable_images)
        self.skipped_images = 0  # in this process (each data-loader worker has its own copy)
        self._left_out_warnings = 0
        mode = "training" if is_train else "inference"
        logger.info(f"DetrDatasetMapper ({mode}) augmentation: {self.augmentation}")
        if self.augmentation_with_crop is not None:
            logger.info(f"DetrDatasetMapper ({mode}) with crop: {self.augmentation_with_crop}")

    def _choose_augmentation(self) -> T.AugmentationList:
        if (
            self.is_train
            and self.augmentation_with_crop is not None
            and random.random() < self.crop_probability
        ):
            return self.augmentation_with_crop
        return self.augmentation

    def _prepare_annotations(self, annotations: list[dict], dataset_dict: dict) -> list[dict]:
        """Drop crowd regions and, without ``mask_on``, the fields this mapper will not use.
        With ``mask_on``, check that every kept annotation has a segmentation that
        ``mask_format`` accepts."""
        kept = []
        for index, annotation in enumerate(annotations):
            if annotation.get("iscrowd", 0) != 0:
                continue
            segmentation = annotation.get("segmentation")
            if not self.mask_on:
                annotation.pop("segmentation", None)
            elif segmentation is None:
                raise ValueError(
                    f"DetrDatasetMapper(mask_on=True): annotation {index} of "
                    f"{describe_image(dataset_dict)} has no 'segmentation'; expected COCO "
                    "polygons, an RLE dict or an [H, W] mask for every non-crowd annotation "
                    "(or set mask_on=False)"
                )
            elif self.mask_format == "polygon" and not isinstance(segmentation, list):
                raise ValueError(
                    f"DetrDatasetMapper(mask_format='polygon'): annotation {index} of "
                    f"{describe_image(dataset_dict)} has a {type(segmentation).__name__} "
                    "segmentation; expected COCO polygons (a list), or mask_format='bitmask' / "
                    "'auto'"
                )
            elif isinstance(segmentation, list):
                usable = _usable_polygons(segmentation, index, dataset_dict)
                if len(usable) < len(segmentation):
                    self._warn_left_out(len(segmentation) - len(usable), index, dataset_dict)
                annotation["segmentation"] = usable
            else:  # detectron2's transforms take compressed RLE only
                where = f"annotation {index} of {describe_image(dataset_dict)}"
                annotation["segmentation"] = compressed_rle(segmentation, where)
            annotation.pop("keypoints", None)
            _coordinates_as_floats(annotation)
            kept.append(annotation)
        return kept

    def _warn_left_out(self, count: int, index: int, dataset_dict: dict) -> None:
        """Warn about degenerate polygon parts left out, for the first
        ``_LEFT_OUT_WARNINGS`` annotations this mapper (each data loader worker's copy) meets."""
        self._left_out_warnings += 1
        if self._left_out_warnings > _LEFT_OUT_WARNINGS:
            return
        logger.warning(
            f"DetrDatasetMapper: left out {count} polygon(s) with fewer than 3 points from "
            f"annotation {index} of {describe_image(dataset_dict)} (they cover no pixel; such "
            f"parts are left out of every annotation, this is shown for the first "
            f"{_LEFT_OUT_WARNINGS})"
        )

    def _read_image(self, dataset_dict: dict) -> np.ndarray:
        """The image of ``dataset_dict`` [H, W, 3] in ``img_format``; fills a missing
        ``height`` / ``width`` and checks a given one."""
        image = read_image_file(
            dataset_dict["file_name"],
            self.img_format,
            image_id=dataset_dict.get("image_id"),
            apply_exif_orientation=self.apply_exif_orientation,
        )
        try:
            utils.check_image_size(dataset_dict, image)
        except utils.SizeMismatchError as error:
            raise _size_mismatch(dataset_dict, image, self.apply_exif_orientation) from error
        return image

    def _read_image_or_skip(self, dataset_dict: dict) -> np.ndarray | None:
        """:meth:`_read_image`, or ``None`` (with a warning) for an unreadable file when
        ``skip_unreadable_images``; the caller then returns ``None`` for the whole dict."""
        try:
            return self._read_image(dataset_dict)
        except HighBitDepthError:
            raise  # a format to convert, not a broken file: every such image would be skipped
        except ImageReadError as error:
            if not self.skip_unreadable_images:
                raise
            self.skipped_images += 1
            logger.warning(
                f"DetrDatasetMapper: skipped an unreadable image, another one takes its place "
                f"(skip_unreadable_images=True; {self.skipped_images} skipped in this "
                f"process): {error}"
            )
            return None

    def _set_image(self, dataset_dict: dict, image: np.ndarray) -> None:
        """Store the augmented image [H', W', C] as the uint8 tensor [C, H', W']."""
        dataset_dict["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))

    def _resolve_mask_format(self, annotations: list[dict]) -> str:
        """``mask_format`` with "auto" resolved for these (prepared) annotations."""
        if self.mask_format != "auto":
            return self.mask_format
        # RLE dicts and arrays become dense masks when transformed: not PolygonMasks.
        if self.mask_on and any(not isinstance(a["segmentation"], list) for a in annotations):
            return "bitmask"
        return "polygon"

    def __call__(self, dataset_dict: dict) -> dict | None:
        """Map one dataset dict (not modified) to a model input dict (see the class docs);
        ``None`` for an unreadable image with ``skip_unreadable_images``."""
        dataset_dict = copy.deepcopy(dataset_dict)
        image = self._read_image_or_skip(dataset_dict)
        if image is None:
            return None

        annotations = dataset_dict.pop("annotations", None)
        dataset_dict.pop("sem_seg_file_name", None)
        if not self.is_train:
            annotations = None
        elif annotations is not None:
            annotations = self._prepare_annotations(annotations, dataset_dict)

        # Boxes ride along in AugInput so that box-aware augmentations can see them.
        boxes = None
        if annotations:
            boxes = np.array(
                [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in annotations],
                dtype=np.float32,
            )
        aug_input = ClampedAugInput(image, boxes=boxes)
        transforms = self._choose_augmentation()(aug_input)
        image_shape = aug_input.image.shape[:2]
        self._set_image(dataset_dict, aug_input.image)

        if annotations is not None:
            mask_format = self._resolve_mask_format(annotations)
            annotations = [
                utils.transform_instance_annotations(a, transforms, image_shape)
                for a in annotations
            ]
            instances = utils.annotations_to_instances(
                annotations, image_shape, mask_format=mask_format
            )
            if self.mask_on and not instances.has("gt_masks"):  # an image without objects
                instances.gt_masks = (
                    BitMasks(torch.zeros((0, *image_shape), dtype=torch.bool))
                    if mask_format == "bitmask"
                    else PolygonMasks([])
                )
            # Also drops instances whose mask a crop emptied (by_mask, with mask_on).
            dataset_dict["instances"] = utils.filter_empty_instances(instances)
        return dataset_dict


def _coordinates_as_floats(annotation: dict) -> None:
    """Make ``bbox`` and polygon coordinates floats, in place.

    detectron2's transforms scale coordinate arrays in place, so integer coordinates (json
    integers, as most labeling tools and the bundled shapes data write them) would be truncated
    by every resize: a box ``[11, 13, 51, 37]`` (XYWH) resized by 0.83 became ``[9, 10, 51, 41]``
    (XYXY) instead of ``[9.14, 10.83, 51.54, 41.67]``, shifting targets up-left by up to 1 px.
    """
    annotation["bbox"] = [float(value) for value in annotation["bbox"]]
    segmentation = annotation.get("segmentation")
    if isinstance(segmentation, list):
        annotation["segmentation"] = [
            np.asarray(polygon, dtype=np.float64) for polygon in segmentation
        ]


def _usable_polygons(polygons: list, index: int, dataset_dict: dict) -> list:
    """The polygons of COCO polygon segmentation ``polygons`` that have at least 3 points.

    Labeling tools export degenerate parts (a point or a line: fewer than 6 numbers, or an
    empty list); they cover no pixel, and detectron2's ``PolygonMasks`` refuses them with an
    error that names neither the image nor the annotation. They are left out here (the caller
    warns about them). A segmentation with no usable polygon left, or not a list of coordinate
    lists, is an error naming the image and the annotation.
    """
    where = f"annotation {index} of {describe_image(dataset_dict)}"
    usable = []
    for polygon in polygons:
        if isinstance(polygon, str | bytes | dict) or not isinstance(
            polygon, Sequence | np.ndarray
        ):
            raise ValueError(
                f"DetrDatasetMapper(mask_on=True): {where} has a segmentation that is not a list "
                f"of polygons; expected [[x0, y0, x1, y1, ...], ...], got an element of type "
                f"{type(polygon).__name__} ({_short(polygons)})"
            )
        if len(polygon) % 2:
            raise ValueError(
                f"DetrDatasetMapper(mask_on=True): {where} has a polygon with an odd number of "
                f"coordinates ({len(polygon)}); expected x, y pairs"
            )
        if len(polygon) >= 6:
            usable.append(polygon)
    if not usable:
        raise ValueError(
            f"DetrDatasetMapper(mask_on=True): {where} has no polygon with at least 3 points "
            f"(segmentation {_short(polygons)}); expected a mask for every non-crowd annotation: "
            "fix or remove the annotation, or set mask_on=False"
        )
    return usable


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _size_mismatch(
    dataset_dict: dict, image: np.ndarray, exif_applied: bool
) -> utils.SizeMismatchError:
    """The error for an image whose size is not the dataset's ``width`` / ``height``; it says
    when an EXIF rotation explains the difference (labels made on the stored pixels)."""
    height, width = image.shape[:2]
    expected = (dataset_dict.get("width"), dataset_dict.get("height"))
    where = describe_image(dataset_dict)
    orientation = exif_orientation(dataset_dict["file_name"]) if exif_applied else None
    if orientation in TRANSPOSING_ORIENTATIONS and expected == (height, width):
        return utils.SizeMismatchError(
            f"DetrDatasetMapper: {where} is {width} x {height} px (width x height) once its "
            f"EXIF orientation ({orientation}, a 90-degree rotation) is applied, but the dataset "
            f"says {expected[0]} x {expected[1]}, the stored, unrotated size: its annotations "
            "were probably made on the stored pixels (many labeling tools ignore EXIF). Set "
            "apply_exif_orientation=False on the mappers (e.g. "
            "dataloader.train.mapper.apply_exif_orientation=False and the same for "
            "dataloader.test) to train on the stored pixels, or re-export the images with the "
            "rotation applied and the labels redrawn"
        )
    return utils.SizeMismatchError(
        f"DetrDatasetMapper: {where} is {width} x {height} px (width x height), but the "
        f"dataset says {expected[0]} x {expected[1]}; expected the json's width / height to be "
        "the image file's size"
    )


def describe_image(dataset_dict: dict) -> str:
    """``"image 'a.jpg' (image_id=3)"`` for error messages."""
    where = f"image {dataset_dict.get('file_name')!r}"
    if dataset_dict.get("image_id") is not None:
        where += f" (image_id={dataset_dict['image_id']!r})"
    return where
