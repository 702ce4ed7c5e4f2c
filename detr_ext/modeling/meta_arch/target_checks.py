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
"""

from __future__ import annotations

from detectron2.structures import Boxes, Instances

__all__ = ["check_ground_truth"]


def check_ground_truth(
    instances: Instances | None, index: int, num_classes: int | None, where: str
) -> None:
    """Raise a ``ValueError`` naming ``batched_inputs[index]`` if its ground truth is not
    ``gt_boxes`` (``Boxes``, absolute XYXY, finite, ``x0 <= x1``, ``y0 <= y1``) and
    ``gt_classes`` in ``[0, num_classes)`` (``num_classes`` None: classes not checked).

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
