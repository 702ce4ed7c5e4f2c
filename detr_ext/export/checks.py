"""Helpers shared by ``tools/export_model.py``, ``tools/benchmark_export.py`` and the tests:
build a model from a LazyConfig for export, read what its config tells a runner, and compare
an exported model's outputs with the eager model's."""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Sequence
from typing import Any

import torch
from detectron2.config import instantiate
from omegaconf import DictConfig
from torch import Tensor, nn

from ..checkpoint.loading import ema_weights_requested, load_model_weights
from ..engine.input_format import mapper_image_options
from ..engine.predictor import metadata_for_config
from ..modeling.meta_arch import DETRSegmDetectorBase
from .runners import ExportedRunner
from .wrapper import ExportableDetector, ExportError

__all__ = ["build_model", "compare_outputs", "config_metadata", "verify_runner"]

logger = logging.getLogger(__name__)


def build_model(
    cfg: DictConfig,
    weights: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    seed: int = 0,
) -> nn.Module:
    """``instantiate(cfg.model)`` in eval mode on ``device``, with ``weights`` loaded strictly
    (:func:`~detr_ext.checkpoint.load_model_weights`; its EMA weights when the config has
    ``train.ema.enabled`` and ``train.ema.use_ema_weights_for_eval_only``, as ``--eval-only``),
    or with the random initialisation drawn after ``torch.manual_seed(seed)`` when ``weights``
    is None.

    Raises:
        ExportError: for a model with DETR's segmentation head (its masks are not exported).
    """
    torch.manual_seed(seed)
    model = instantiate(cfg.model)
    if isinstance(model, DETRSegmDetectorBase):
        raise ExportError(
            f"cannot export {type(model).__name__}: its masks (instance and panoptic) are not "
            "exported; detr_ext.export traces detectors that return boxes, scores and classes "
            "only"
        )
    if weights is not None:
        # The weights --eval-only evaluates: the EMA ones when the config asks for them.
        load_model_weights(model, weights, where="--weights", ema=ema_weights_requested(cfg))
    return model.to(device).eval()


def config_metadata(cfg: DictConfig) -> dict[str, Any]:
    """``test_resize``, ``thing_classes`` and ``apply_exif_orientation`` for
    :class:`~detr_ext.export.ExportMetadata`.

    ``test_resize`` is set when the test augmentation is one ``ResizeShortestEdge`` with a
    single short edge (what a runner can redo without the config); ``thing_classes`` when the
    test dataset's metadata has them (a dataset whose files are missing gives none).
    """
    fields: dict[str, Any] = {"test_resize": None, "thing_classes": None}
    try:
        augmentation = list(cfg.dataloader.test.mapper.augmentation)
    except (AttributeError, KeyError):  # omegaconf raises either for a missing key
        augmentation = []
    if len(augmentation) == 1:
        resize = augmentation[0]
        target = resize.get("_target_")
        short_edge = resize.get("short_edge_length")
        if isinstance(short_edge, Sequence) and len(short_edge) == 1:
            short_edge = short_edge[0]
        name = getattr(target, "__name__", str(target))
        if name.endswith("ResizeShortestEdge") and isinstance(short_edge, int):
            fields["test_resize"] = {
                "short_edge_length": short_edge,
                "max_size": int(resize.get("max_size", 1333)),
            }
    try:
        classes = metadata_for_config(cfg).get("thing_classes", None)
    except Exception as error:  # a dataset that is not there: no names, not a failure
        logger.warning("No class names for the export metadata: %s", error)
        classes = None
    fields["thing_classes"] = list(classes) if classes else None
    # How the test mapper reads image files, so that a runner without the config does too.
    fields["apply_exif_orientation"] = mapper_image_options(cfg)[1]
    return fields


def compare_outputs(expected: Sequence[Tensor], actual: Sequence[Tensor]) -> dict[str, float | int]:
    """Max absolute differences of ``(boxes, scores)`` and the count of differing ``classes``
    between two ``(boxes, scores, classes)`` results of the same shapes."""
    if [tuple(t.shape) for t in expected] != [tuple(t.shape) for t in actual]:
        raise ValueError(
            "compare_outputs: expected outputs of equal shapes, got "
            f"{[tuple(t.shape) for t in expected]} and {[tuple(t.shape) for t in actual]}"
        )
    boxes, scores, classes = (t.detach().cpu() for t in expected)
    other_boxes, other_scores, other_classes = (t.detach().cpu() for t in actual)

    def max_abs(a: Tensor, b: Tensor) -> float:
        return float((a.double() - b.double()).abs().max()) if a.numel() else 0.0

    return {
        "boxes": max_abs(boxes, other_boxes),
        "scores": max_abs(scores, other_scores),
        "classes_differing": int((classes != other_classes).sum()),
    }


def verify_runner(
    model: nn.Module,
    runner: ExportedRunner,
    sizes: Sequence[tuple[int, int]],
    batch: int = 2,
    seed: int = 0,
    float64_reference: bool = True,
) -> dict[str, dict[str, float | int]]:
    """Compare ``runner`` with the eager ``model`` on random batches, one per padded size.

    The last image of each batch is a little smaller, so padding is exercised. Two-stage
    models pick their queries by top-k of encoder scores, so near-equal scores (common with
    random weights) make float32 results depend on rounding: a change in the 6th digit can
    swap two proposals and the detections after them. The float64 reference measures that:
    where the eager model in float32 and in float64 agree, the inputs are well-conditioned
    and the exported model must agree too.

    Returns:
        ``{"exported": ..., "float64": ...}``: the worst :func:`compare_outputs` over the
        batches of the runner against eager float32, and of eager float32 against eager float64
        (``None`` without ``float64_reference``).
    """
    eager = ExportableDetector(model)
    eager64 = ExportableDetector(copy.deepcopy(model).double()) if float64_reference else None
    generator = torch.Generator().manual_seed(seed)
    batch = min(batch, runner.metadata.max_batch)
    channels = len(runner.metadata.pixel_mean)
    exported = _worst([])
    float64 = _worst([]) if float64_reference else None
    for height, width in sizes:
        images = torch.randn(batch, channels, height, width, generator=generator)
        image_sizes = torch.tensor([[height, width]] * batch, dtype=torch.int64)
        image_sizes[-1] = torch.tensor([height - height // 8, width - width // 6])
        images, image_sizes = images.to(model.device), image_sizes.to(model.device)
        with torch.no_grad():
            expected = eager(images, image_sizes)
            exported = _worst([exported, compare_outputs(expected, runner(images, image_sizes))])
            if eager64 is not None:
                reference = eager64(images.double(), image_sizes)
                float64 = _worst([float64, compare_outputs(reference, expected)])
    return {"exported": exported, "float64": float64}


def _worst(results: Sequence[dict[str, float | int]]) -> dict[str, float | int]:
    worst: dict[str, float | int] = {"boxes": 0.0, "scores": 0.0, "classes_differing": 0}
    for result in results:
        worst = {key: max(worst[key], result[key]) for key in worst}
    return worst
