"""COCO metrics through one of two backends: hotcoco (Rust) or pycocotools (Python).

Both compute COCO's detection metrics (``bbox``, ``segm``) with the same API
(``COCO(json)``, ``loadRes``, ``COCOeval.evaluate/accumulate/summarize``, ``stats``,
``eval["precision"]``). They agree to every digit on ordinary data (tests/evaluation), and
differ where pycocotools has a known flaw: a ground-truth annotation whose ``id`` is 0 is never
counted as matched (pycocotools marks "unmatched" with id 0), so on a labeling-tool export
whose ids start at 0 a perfect detector scores below 100. hotcoco counts it. Datasets
registered through :func:`detr_ext.data.register_coco_format_dataset` are evaluated on a copy whose
ids start at 1, where the two agree.

``backend="auto"`` (the default of :class:`~detr_ext.evaluation.COCOEvaluator`) takes hotcoco
when it is installed and pycocotools otherwise; ``"hotcoco"`` requires it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import warnings
from typing import Any

import numpy as np

BACKENDS = ("auto", "hotcoco", "pycocotools")
# What hotcoco evaluates here; keypoints stay with pycocotools (see evaluate_on_coco).
HOTCOCO_IOU_TYPES = ("bbox", "segm")


def hotcoco_available() -> bool:
    """Whether the ``hotcoco`` package can be imported."""
    return importlib.util.find_spec("hotcoco") is not None


def resolve_backend(backend: str) -> str:
    """``"hotcoco"`` or ``"pycocotools"`` for a configured ``backend``.

    Raises:
        ValueError: ``backend`` is not one of :data:`BACKENDS`.
        ImportError: ``backend="hotcoco"`` and hotcoco is not installed.
    """
    if backend not in BACKENDS:
        raise ValueError(f"COCO evaluation backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        return "hotcoco" if hotcoco_available() else "pycocotools"
    if backend == "hotcoco" and not hotcoco_available():
        raise ImportError(
            "COCO evaluation backend 'hotcoco' was requested but hotcoco is not installed; "
            "`pip install hotcoco` (it is in requirements.txt) or set backend='pycocotools'"
        )
    return backend


def load_coco_gt(json_file: str, backend: str) -> Any:
    """The ground truth of ``json_file`` as the backend's ``COCO`` object."""
    if backend == "hotcoco":
        import hotcoco

        return hotcoco.COCO(json_file)
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(json_file)


def _cocoeval_class(backend: str, max_dets: list[int]) -> Any:
    if backend == "hotcoco":
        import hotcoco

        return hotcoco.COCOeval
    if max_dets[2] != 100:
        # pycocotools' summarize() reads AP at maxDets=100 whatever maxDets holds;
        # detectron2's subclass reads it at maxDets[2].
        from detectron2.evaluation.coco_evaluation import COCOevalMaxDets

        return COCOevalMaxDets
    from pycocotools.cocoeval import COCOeval

    return COCOeval


def evaluate_on_coco(
    coco_gt: Any,
    coco_results: list[dict],
    iou_type: str,
    backend: str,
    img_ids: list[int] | None = None,
    max_dets_per_image: list[int] | None = None,
    print_summary: bool = True,
) -> Any:
    """Run COCO evaluation of ``coco_results`` against ``coco_gt`` with ``backend``.

    The same steps as detectron2's ``_evaluate_predictions_on_coco`` (``bbox`` removed from
    ``segm`` results, so that mask AP uses the mask area for small/medium/large), for either
    backend.

    Args:
        coco_gt: the backend's ``COCO`` (from :func:`load_coco_gt`).
        coco_results: COCO result dicts (``image_id``, ``category_id``, ``score`` and
            ``bbox`` and/or ``segmentation``); not modified.
        iou_type: ``"bbox"`` or ``"segm"`` (``"keypoints"`` with pycocotools only).
        backend: ``"hotcoco"`` or ``"pycocotools"`` (see :func:`resolve_backend`).
        img_ids: evaluate only these images (default: all of ``coco_gt``).
        max_dets_per_image: ``maxDets``, at least 3 values; AP is read at the third.
        print_summary: print the 12 ``Average Precision/Recall`` lines, as detectron2 does.

    Returns:
        the summarized ``COCOeval`` (``stats``, ``eval["precision"]`` of shape
        ``[T, R, K, A, M]``).
    """
    if backend not in ("hotcoco", "pycocotools"):
        raise ValueError(f"backend must be 'hotcoco' or 'pycocotools', got {backend!r}")
    if backend == "hotcoco" and iou_type not in HOTCOCO_IOU_TYPES:
        raise ValueError(
            f"the hotcoco backend evaluates {HOTCOCO_IOU_TYPES} here, got iou_type={iou_type!r}"
        )
    if not coco_results:
        raise ValueError("evaluate_on_coco needs at least one result (got an empty list)")
    max_dets = list(max_dets_per_image or [1, 10, 100])
    if len(max_dets) < 3:
        raise ValueError(f"max_dets_per_image needs at least 3 values, got {max_dets}")

    # The loaders add or drop top-level keys only ("id", "area", "bbox"), so copying each dict
    # keeps the caller's results intact; a deep copy took 13 s of 16 s on 500k results.
    coco_results = [dict(result) for result in coco_results]
    if iou_type == "segm":
        for result in coco_results:
            result.pop("bbox", None)
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes(coco_results)
    coco_eval = _cocoeval_class(backend, max_dets)(coco_gt, coco_dt, iou_type)
    if iou_type != "keypoints":
        coco_eval.params.maxDets = max_dets
    if img_ids is not None:
        coco_eval.params.imgIds = list(img_ids)

    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        # hotcoco warns that AR lines use a custom maxDets; our lines name the values used.
        warnings.filterwarnings("ignore", message="hotcoco: max_dets differ")
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    if print_summary:
        print("\n".join(summary_lines(summary_stats(coco_eval), max_dets)))
    return coco_eval


def summary_lines(stats: np.ndarray, max_dets: list[int]) -> list[str]:
    """The 12 ``Average Precision/Recall`` lines of a bbox/segm evaluation, in pycocotools'
    format, whichever backend computed ``stats`` (hotcoco's own lines are spaced differently);
    AP and the per-area numbers are read at ``max_dets[2]``, as detectron2 reads them."""
    if len(stats) != 12:
        raise ValueError(f"expected the 12 bbox/segm summary numbers, got {len(stats)}")
    rows = [
        # (AP?, IoU, area, maxDets)
        (True, None, "all", max_dets[2]),
        (True, 0.5, "all", max_dets[2]),
        (True, 0.75, "all", max_dets[2]),
        (True, None, "small", max_dets[2]),
        (True, None, "medium", max_dets[2]),
        (True, None, "large", max_dets[2]),
        (False, None, "all", max_dets[0]),
        (False, None, "all", max_dets[1]),
        (False, None, "all", max_dets[2]),
        (False, None, "small", max_dets[2]),
        (False, None, "medium", max_dets[2]),
        (False, None, "large", max_dets[2]),
    ]
    lines = []
    for value, (ap, iou, area, dets) in zip(stats, rows):
        title, kind = ("Average Precision", "(AP)") if ap else ("Average Recall", "(AR)")
        iou_text = "0.50:0.95" if iou is None else f"{iou:0.2f}"
        lines.append(
            f" {title:<18} {kind} @[ IoU={iou_text:<9} | area={area:>6s} | "
            f"maxDets={dets:>3d} ] = {value:0.3f}"
        )
    return lines


def summary_stats(coco_eval: Any) -> np.ndarray:
    """The 12 summary numbers of a summarized ``COCOeval`` as a float64 array."""
    return np.asarray(coco_eval.stats, dtype=np.float64)
