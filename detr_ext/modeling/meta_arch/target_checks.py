"""Ground truth that the losses would take silently or fail on deep inside, refused where it
enters the model (:meth:`~detr_ext.modeling.meta_arch.base.DetectorBase.prepare_targets`).

- ``gt_classes`` outside ``[0, num_classes)``: DETR trained class ``K`` as "no object" without
  a word, ``-1`` wrapped to class ``K - 1`` in the focal cost, and the other detectors stopped
  in an ``IndexError`` inside the matcher or the denoising embedding (a device-side assert on
  a GPU). A dataset registered with its own loader and 1-based category ids does this.
- boxes with a non-finite coordinate or ``x1 < x0`` / ``y1 < y0`` (a COCO ``[x, y, w, h]``
  box given as XYXY): GIoU above 1 made the losses finite but hugely negative (DINO: about
  -117,000), a divergence no non-finite check sees. The bundled mappers drop such boxes; a
  custom mapper or a direct call may not.
- ``gt_classes`` of a float dtype (truncated by the cast to int64; NaN became -2**63 and an
  ``IndexError`` in the matcher), and ``instances.image_size`` other than its image's size (a
  custom mapper building ``Instances`` from the original size after resizing: the boxes were
  normalized by the wrong size without a word).
"""

from __future__ import annotations

import logging

import torch
from detectron2.structures import Boxes, Instances
from detectron2.utils.logger import log_first_n

__all__ = ["check_ground_truth", "warn_on_more_objects_than_queries"]


def check_ground_truth(
    instances: Instances | None,
    index: int,
    num_classes: int | None,
    where: str,
    image_size: tuple[int, int] | None = None,
) -> None:
    """Raise a ``ValueError`` naming ``batched_inputs[index]`` if its ground truth is not
    ``gt_boxes`` (``Boxes``, absolute XYXY, finite, ``x0 <= x1``, ``y0 <= y1``) and integer
    ``gt_classes`` in ``[0, num_classes)`` (``num_classes`` None: the range is not checked),
    or if ``instances.image_size`` is not ``image_size``, the ``(H, W)`` of its image tensor
    (``None``: not checked).

    Values are read only from CPU tensors, as the data loader gives them; ground truth
    already on a GPU is not read (that would wait for the GPU at every image).
    """
    if not isinstance(instances, Instances):
        raise ValueError(
            f"{where}: training needs batched_inputs[{index}]['instances'] (Instances with "
            f"gt_boxes and gt_classes), got {type(instances).__name__}"
        )
    if not instances.has("gt_boxes") or not instances.has("gt_classes"):
        raise ValueError(
            f"{where}: training needs batched_inputs[{index}]['instances'] with gt_boxes and "
            f"gt_classes, got fields {sorted(instances.get_fields())}"
        )
    boxes = instances.gt_boxes
    if not isinstance(boxes, Boxes):
        raise ValueError(
            f"{where}: expected batched_inputs[{index}]['instances'].gt_boxes as "
            f"detectron2 Boxes (absolute XYXY), got {type(boxes).__name__}"
        )
    classes = instances.gt_classes
    if classes.is_floating_point() or classes.is_complex() or classes.dtype == torch.bool:
        raise ValueError(
            f"{where}: expected batched_inputs[{index}]['instances'].gt_classes as an integer "
            f"tensor of class indices, got dtype {classes.dtype} (a float class is cast to an "
            "integer by truncation, and NaN becomes -2**63)"
        )
    if image_size is not None and tuple(instances.image_size) != tuple(image_size):
        raise ValueError(
            f"{where}: batched_inputs[{index}]['instances'].image_size is "
            f"{tuple(instances.image_size)}, but its image is {tuple(image_size)} (H, W): boxes "
            "are normalized by instances.image_size, so expected the size of the image the "
            "boxes are in, after the mapper's transforms (Instances(image.shape[:2]), as "
            "detectron2's annotations_to_instances makes it)"
        )
    if boxes.tensor.device.type != "cpu" or classes.device.type != "cpu":
        return
    if num_classes is not None and len(classes):
        outside = (classes < 0) | (classes >= num_classes)
        if outside.any():
            raise ValueError(
                f"{where}: batched_inputs[{index}] has gt_classes "
                f"{sorted(set(classes[outside].tolist()))[:10]}, expected class indices in "
                f"[0, {num_classes}) (model.num_classes={num_classes}); datasets give "
                "contiguous indices through thing_dataset_id_to_contiguous_id (a dataset "
                "registered with its own loader must map its category ids to 0..K-1)"
            )
    tensor = boxes.tensor
    invalid = (
        ~tensor.isfinite().all(1) | (tensor[:, 2] < tensor[:, 0]) | (tensor[:, 3] < tensor[:, 1])
    )
    if invalid.any():
        raise ValueError(
            f"{where}: batched_inputs[{index}] has {int(invalid.sum())} gt_boxes that are not "
            "absolute XYXY boxes (finite, x0 <= x1, y0 <= y1), e.g. "
            f"{[round(v, 2) for v in tensor[invalid][0].tolist()]} (a COCO [x, y, w, h] box "
            "given as XYXY?)"
        )


def warn_on_more_objects_than_queries(
    num_objects: int, num_queries: int | None, index: int, where: str
) -> None:
    """Log a warning, once per process, when an image has more objects than the model has
    queries: one-to-one matching then trains at most ``num_queries`` of them per step (the
    others still count in the loss normalization, as in DETR and detrex), so recall on such
    images is capped. Dense scenes (SKU-110K: ~150 objects per image) need a larger
    ``model.num_queries``."""
    if num_queries is None or num_objects <= num_queries:
        return
    log_first_n(
        logging.WARNING,
        f"{where}: batched_inputs[{index}] has {num_objects} objects, more than "
        f"model.num_queries={num_queries}: each training step matches at most {num_queries} of "
        "them, so the model cannot learn to find them all; raise model.num_queries for such "
        "dense images (said once)",
        n=1,
        name=__name__,
    )
