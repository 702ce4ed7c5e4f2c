"""The exportable inference graph of a detector: normalized padded images in, fixed-size
detection tensors out.

:class:`ExportableDetector` wraps a :class:`~detr_ext.modeling.DetectorBase` so that what
``torch.export`` (and from it AOTInductor and ONNX) traces is exactly the eager model's
inference: the padding mask from the image sizes, ``forward_outputs`` (backbone, neck,
transformer, heads) and ``inference_tensors`` (the scoring and top-k that ``inference`` wraps
into ``Instances``), plus the scaling of the boxes to pixels. Normalization, padding and the
``Instances`` wrapping stay in Python (:mod:`detr_ext.export.runners`).
"""

from __future__ import annotations

import os

import torch
from detectron2.structures import ImageList
from torch import Tensor, nn

from detr_ext.layers import MultiScaleDeformableAttention
from detr_ext.layers.box_ops import box_cxcywh_to_xyxy
from detr_ext.modeling.meta_arch import DetectorBase
from detr_ext.ops import compiled_kernel_available
from detr_ext.ops.ms_deform_attn import BACKEND_ENV

__all__ = [
    "ExportError",
    "ExportableDetector",
    "check_exportable",
    "padding_mask_from_sizes",
]


class ExportError(RuntimeError):
    """A model or a setting that cannot be exported; the message names the model and why."""


def padding_mask_from_sizes(images: Tensor, image_sizes: Tensor) -> Tensor:
    """The padding mask of a batch padded at the bottom and right.

    Args:
        images: ``[B, C, H, W]`` padded batch (only its shape and device are used).
        image_sizes: ``[B, 2]`` integer ``(h_i, w_i)`` of each image before padding.

    Returns:
        ``[B, H, W]`` bool, True on padding: the mask ``DetectorBase.preprocess_image`` makes.
    """
    _, _, height, width = images.shape
    rows = torch.arange(height, device=images.device)
    columns = torch.arange(width, device=images.device)
    below = rows[None, :, None] >= image_sizes[:, 0, None, None]
    right = columns[None, None, :] >= image_sizes[:, 1, None, None]
    return below | right


def _defining_class(cls: type, name: str) -> type:
    return next(klass for klass in cls.__mro__ if name in vars(klass))


def check_exportable(model: nn.Module) -> None:
    """Raise :class:`ExportError` unless ``model`` can go through :class:`ExportableDetector`.

    Needed: a :class:`~detr_ext.modeling.DetectorBase` that keeps its ``forward`` (inference
    = ``forward_outputs`` then ``inference``) and whose ``inference_tensors`` is what its
    ``inference`` wraps (a subclass that overrides ``inference`` alone would be exported with
    its parent's scoring), and, for a model with multi-scale deformable attention, the compiled
    operator (``torch.export`` keeps it as one ``detr_ext::ms_deform_attn`` node; the
    grid_sample fallback reads the level sizes from a tensor, which cannot be traced with
    dynamic image sizes).
    """
    name = type(model).__name__
    if not isinstance(model, DetectorBase):
        raise ExportError(
            f"cannot export {name}: expected a detr_ext DetectorBase (DETR, Deformable DETR, "
            f"DINO, Align-DETR, ...), got {type(model).__module__}.{name}"
        )
    cls = type(model)
    forward_owner = _defining_class(cls, "forward")
    if forward_owner is not DetectorBase:
        raise ExportError(
            f"cannot export {name}: {forward_owner.__name__} overrides forward(), so its "
            "inference is not DetectorBase's forward_outputs() + inference() (e.g. it reads "
            "text prompts), and that is the graph detr_ext.export traces"
        )
    tensors_owner = _defining_class(cls, "inference_tensors")
    if tensors_owner is DetectorBase:
        raise ExportError(
            f"cannot export {name}: it does not implement inference_tensors() (the fixed-size "
            "scores / labels / boxes its inference() wraps into Instances)"
        )
    inference_owner = _defining_class(cls, "inference")
    if not issubclass(tensors_owner, inference_owner):
        raise ExportError(
            f"cannot export {name}: {inference_owner.__name__} overrides inference() but "
            f"inference_tensors() comes from {tensors_owner.__name__}, so the exported graph "
            "would not score detections the way the model does; implement inference_tensors() "
            f"in {inference_owner.__name__}"
        )
    attentions = [m for m in model.modules() if isinstance(m, MultiScaleDeformableAttention)]
    if not attentions:
        return
    reason = compiled_kernel_available(model.device.type, torch.float32)
    backends = {m.backend or os.environ.get(BACKEND_ENV, "auto") for m in attentions}
    if reason is None and "pytorch" in backends:
        reason = (
            "the PyTorch backend is selected (a module's backend='pytorch' or "
            f"{BACKEND_ENV}=pytorch)"
        )
    if reason is not None:
        raise ExportError(
            f"cannot export {name}: its multi-scale deformable attention must run the compiled "
            f"operator detr_ext::ms_deform_attn (one node in the exported graph), but {reason}. "
            "Build the extension (pip install -e .) and use backend 'auto' or 'compiled'."
        )


class ExportableDetector(nn.Module):
    """A detector's inference as a function of tensors only, for ``torch.export``.

    ``forward(images, image_sizes) -> (boxes, scores, classes)``:

    - ``images``: ``[B, 3, H, W]`` float32, normalized (``(x - pixel_mean) / pixel_std``) and
      zero-padded at the bottom and right, as ``DetectorBase.preprocess_image`` makes it;
    - ``image_sizes``: ``[B, 2]`` int64 ``(h_i, w_i)`` of each image before padding;
    - ``boxes``: ``[B, D, 4]`` absolute ``xyxy`` pixels in each image's unpadded input frame
      (what ``inference`` puts into ``Instances.pred_boxes``, before ``detector_postprocess``
      resizes to the original image); ``scores``: ``[B, D]``; ``classes``: ``[B, D]`` int64.

    ``D`` is the model's detections per image (DETR: its queries; the others:
    ``select_box_nums_for_evaluation``, capped at queries x classes). The wrapped model is put
    in eval mode.

    Args:
        model: a :class:`~detr_ext.modeling.DetectorBase` (checked by :func:`check_exportable`).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        check_exportable(model)
        self.model = model.eval()

    def forward(self, images: Tensor, image_sizes: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        padding_mask = padding_mask_from_sizes(images, image_sizes)
        # forward_outputs reads images.tensor only; the sizes travel as a tensor (detectron2's
        # ImageList takes them so when traced).
        outputs = self.model.forward_outputs(ImageList(images, image_sizes), padding_mask, None)
        scores, labels, boxes = self.model.inference_tensors(outputs)
        # The arithmetic of DetectorBase._make_instances (Boxes.scale by the unpadded size).
        scale = image_sizes[:, [1, 0, 1, 0]].to(boxes.dtype)[:, None, :]
        return box_cxcywh_to_xyxy(boxes) * scale, scores, labels
