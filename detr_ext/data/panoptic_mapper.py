"""``DetrPanopticDatasetMapper``: ``DetrDatasetMapper`` for COCO panoptic datasets, where every
segment (thing or stuff) is one training target with its mask, as in DETR's panoptic recipe."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np
import torch
from detectron2.data import transforms as T
from detectron2.structures import BitMasks, BoxMode, Instances

from ..utils.panoptic_ids import rgb2id
from .aug_input import ClampedAugInput
from .dataset_mapper import DetrDatasetMapper, describe_image
from .image_io import read_image_file

__all__ = ["DetrPanopticDatasetMapper", "rgb2id"]


class DetrPanopticDatasetMapper(DetrDatasetMapper):
    """A dataset mapper for COCO panoptic data (dicts of detectron2's
    ``load_coco_panoptic_json``: ``file_name``, ``pan_seg_file_name``, ``segments_info`` with
    contiguous ``category_id``), for DETR-style panoptic training.

    Reads the image and its panoptic PNG, turns the PNG's colours into segment ids
    (:func:`rgb2id`) and applies the same transforms to them as to the image (detectron2's
    ``apply_segmentation``: nearest-neighbour resizing, exact flips and crops). Every segment
    that is not a crowd region and still has pixels after the transforms becomes one instance:

      - ``gt_classes``: its contiguous ``category_id`` (things and stuff alike), int64 [N];
      - ``gt_boxes``: the tight XYXY box of its mask (``BitMasks.get_bounding_boxes``);
      - ``gt_masks`` (with ``mask_on``): ``BitMasks`` [N, H', W'].

    Without ``mask_on`` the instances carry boxes and classes only (DETR trains its panoptic
    detector on boxes first). Pixels of crowd segments and of no segment are in no mask. At
    test time (``is_train=False``) the PNG is not read and no instances are produced, as in
    :class:`DetrDatasetMapper`.

    Args: as :class:`DetrDatasetMapper`; masks are always ``BitMasks``, so ``mask_format``
    must be ``"auto"`` or ``"bitmask"``.
    """

    def __init__(
        self,
        augmentation: Sequence[T.Augmentation | T.Transform],
        augmentation_with_crop: Sequence[T.Augmentation | T.Transform] | None = None,
        is_train: bool = True,
        mask_on: bool = True,
        img_format: str = "RGB",
        crop_probability: float = 0.5,
        mask_format: str = "auto",
        apply_exif_orientation: bool = True,
        skip_unreadable_images: bool = False,
    ) -> None:
        super().__init__(
            augmentation,
            augmentation_with_crop,
            is_train=is_train,
            mask_on=mask_on,
            img_format=img_format,
            crop_probability=crop_probability,
            mask_format=mask_format,
            apply_exif_orientation=apply_exif_orientation,
            skip_unreadable_images=skip_unreadable_images,
        )
        if mask_format == "polygon":
            raise ValueError(
                "DetrPanopticDatasetMapper: panoptic masks are bitmaps; expected mask_format "
                "'auto' or 'bitmask', got 'polygon'"
            )

    def _read_labels(self, dataset_dict: dict, image_shape: tuple[int, int]) -> tuple:
        """The segments to train on (non-crowd entries of ``segments_info``) and a label map
        [H, W]: ``k + 1`` on the pixels of segment ``k``, 0 elsewhere. uint8 when it fits, else
        float32 (exact up to 2^24), the types detectron2's segmentation transforms take."""
        pan_seg_file_name = dataset_dict.pop("pan_seg_file_name", None)
        segments_info = dataset_dict.pop("segments_info", None)
        if pan_seg_file_name is None or segments_info is None:
            raise ValueError(
                f"DetrPanopticDatasetMapper: the dataset dict of {describe_image(dataset_dict)} "
                "has no 'pan_seg_file_name' / 'segments_info'; expected a COCO panoptic "
                "dataset (dicts of detectron2's load_coco_panoptic_json)"
            )
        color = read_image_file(pan_seg_file_name, "RGB", image_id=dataset_dict.get("image_id"))
        if color.shape[:2] != tuple(image_shape):
            raise ValueError(
                f"DetrPanopticDatasetMapper: panoptic PNG {pan_seg_file_name!r} is "
                f"{color.shape[0]}x{color.shape[1]} (HxW) but {describe_image(dataset_dict)} is "
                f"{image_shape[0]}x{image_shape[1]}; expected the same size"
            )
        segments = [s for s in segments_info if not s.get("iscrowd", 0)]
        label_of_id = {s["id"]: k + 1 for k, s in enumerate(segments)}
        ids, inverse = np.unique(rgb2id(color), return_inverse=True)
        dtype = np.uint8 if len(segments) < 256 else np.float32
        lookup = np.array([label_of_id.get(int(i), 0) for i in ids], dtype=dtype)
        return segments, lookup[inverse.reshape(color.shape[:2])]

    def __call__(self, dataset_dict: dict) -> dict | None:
        """Map one panoptic dataset dict (not modified) to a model input dict (class docs);
        ``None`` for an unreadable image with ``skip_unreadable_images``."""
        dataset_dict = copy.deepcopy(dataset_dict)
        image = self._read_image_or_skip(dataset_dict)
        if image is None:
            return None
        dataset_dict.pop("annotations", None)
        dataset_dict.pop("sem_seg_file_name", None)
        if not self.is_train:
            dataset_dict.pop("pan_seg_file_name", None)
            dataset_dict.pop("segments_info", None)
            aug_input = ClampedAugInput(image)
            self._choose_augmentation()(aug_input)
            self._set_image(dataset_dict, aug_input.image)
            return dataset_dict

        segments, labels = self._read_labels(dataset_dict, image.shape[:2])
        # Boxes ride along in AugInput so that box-aware augmentations can see them.
        boxes = None
        if segments and all("bbox" in s for s in segments):
            boxes = np.array(
                [BoxMode.convert(s["bbox"], BoxMode.XYWH_ABS, BoxMode.XYXY_ABS) for s in segments],
                dtype=np.float32,
            )
        aug_input = ClampedAugInput(image, boxes=boxes, sem_seg=labels)
        self._choose_augmentation()(aug_input)
        image_shape = aug_input.image.shape[:2]
        self._set_image(dataset_dict, aug_input.image)

        labels = torch.from_numpy(np.array(aug_input.sem_seg, dtype=np.int64))
        masks = labels[None] == torch.arange(1, len(segments) + 1)[:, None, None]
        keep = masks.flatten(1).any(dim=1)  # a crop may have removed a segment
        classes = [s["category_id"] for s in segments]
        instances = Instances(image_shape)
        instances.gt_classes = torch.tensor(classes, dtype=torch.int64)[keep]
        bitmasks = BitMasks(masks[keep])
        instances.gt_boxes = bitmasks.get_bounding_boxes()
        if self.mask_on:
            instances.gt_masks = bitmasks
        dataset_dict["instances"] = instances
        return dataset_dict
