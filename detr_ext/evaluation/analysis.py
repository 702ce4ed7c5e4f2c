"""Error analysis of a COCO evaluation: TIDE error breakdown and a confusion matrix.

TIDE (Bolya et al., ECCV 2020) splits the AP a detector loses into error types, each the AP
gained by fixing only that kind of error (at IoU 0.5): ``Cls`` right box, wrong class; ``Loc``
right class, loose box; ``Both`` wrong class and loose box; ``Dupe`` a duplicate of a matched
detection; ``Bkg`` a detection on background; ``Miss`` an object never detected; plus ``FP`` and
``FN``, the AP gained by removing every false positive / recovering every missed object. The
confusion matrix counts, per ground-truth class (rows, last row ``BG``: false positives), the
class each matched detection predicted (columns, last column ``BG``: missed objects).

Both come from hotcoco (``COCOeval.tide_errors()``, ``COCOeval.confusion_matrix()``); this module
writes them where a person and a script can read them.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Any

import numpy as np

from detr_ext.utils.file_io import atomic_write, atomic_write_json

logger = logging.getLogger(__name__)

TIDE_ERRORS = ("Cls", "Loc", "Both", "Dupe", "Bkg", "Miss", "FP", "FN")


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def error_analysis(coco_eval: Any) -> dict[str, Any]:
    """TIDE errors and confusion matrix of an evaluated hotcoco ``COCOeval``.

    Returns:
        ``{"tide": {"ap_base", "delta_ap": {error: dAP}, "counts", "pos_thr", "bg_thr"},
        "confusion": {"matrix": [[K+1 x K+1]], "normalized", "cat_ids", "cat_names",
        "iou_thr"}}`` with plain lists and floats (AP in [0, 1], as hotcoco reports it).
    """
    if not hasattr(coco_eval, "tide_errors"):
        raise TypeError(
            f"error analysis needs a hotcoco COCOeval, got {type(coco_eval).__module__}."
            f"{type(coco_eval).__name__}"
        )
    return {
        "tide": _jsonable(coco_eval.tide_errors()),
        "confusion": _jsonable(coco_eval.confusion_matrix()),
    }


@contextlib.contextmanager
def _quiet_font_lookup():
    # hotcoco asks for font weight 500, which DejaVu Sans lacks: matplotlib then logs one
    # harmless "findfont" warning per text, while drawing and while saving.
    font_logger = logging.getLogger("matplotlib.font_manager")
    level = font_logger.level
    font_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        font_logger.setLevel(level)


def draw_error_analysis(analysis: dict[str, Any], title: str) -> Any:
    """A matplotlib ``Figure``: TIDE's dAP per error type (left), the row-normalized
    confusion matrix (right; the 25 most confused classes when there are more than 30)."""
    from hotcoco import plot as hotcoco_plot
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    num_classes = len(analysis["confusion"]["cat_names"])
    side = min(max(6.0, 0.45 * (min(num_classes, 25) + 1)), 16.0)
    fig = Figure(figsize=(7.0 + side, side), dpi=100)
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(1, 2, width_ratios=[7.0, side], wspace=0.35)
    tide = analysis["tide"]
    confusion = dict(analysis["confusion"])
    confusion["matrix"] = np.asarray(confusion["matrix"], dtype=float)
    confusion["normalized"] = np.asarray(confusion["normalized"], dtype=float)
    with _quiet_font_lookup():
        hotcoco_plot.tide_errors(tide, ax=fig.add_subplot(grid[0]), paper_mode=True)
        hotcoco_plot.confusion_matrix(confusion, ax=fig.add_subplot(grid[1]), paper_mode=True)
    delta = tide["delta_ap"]
    fig.suptitle(
        f"{title}: AP50 {tide['ap_base']:.3f}; removing every false positive would add "
        f"{delta.get('FP', 0.0):.3f}, finding every missed object {delta.get('FN', 0.0):.3f}",
        fontsize=12,
    )
    return fig


def format_tide_table(tide: dict[str, Any]) -> str:
    """TIDE's dAP per error type as a two-row text table (AP points, 0-100)."""
    names = [e for e in TIDE_ERRORS if e in tide["delta_ap"]]
    head = "  ".join(f"{n:>6}" for n in ["AP50", *names])
    values = [tide["ap_base"], *(tide["delta_ap"][n] for n in names)]
    row = "  ".join(f"{100 * v:6.2f}" for v in values)
    return f"{head}\n{row}"


def write_error_analysis(coco_eval: Any, output_dir: str, task: str, metadata: Any = None) -> dict:
    """Write ``<task>_tide.json``, ``<task>_confusion.json`` and ``<task>_analysis.png`` to
    ``output_dir`` for an evaluated hotcoco ``COCOeval``; returns the analysis dict."""
    analysis = error_analysis(coco_eval)
    os.makedirs(output_dir, exist_ok=True)
    atomic_write_json(os.path.join(output_dir, f"{task}_tide.json"), analysis["tide"])
    atomic_write_json(os.path.join(output_dir, f"{task}_confusion.json"), analysis["confusion"])
    name = getattr(metadata, "name", None) or "dataset"
    fig = draw_error_analysis(analysis, f"{task} errors on {name}")
    png = os.path.join(output_dir, f"{task}_analysis.png")
    with _quiet_font_lookup():
        atomic_write(png, lambda f: fig.savefig(f, format="png", bbox_inches="tight"))
    logger.info(
        "TIDE %s errors (AP50, then the AP50 gained by fixing each error type; points):"
        "\n%s\nwritten to %s",
        task,
        format_tide_table(analysis["tide"]),
        png,
    )
    return analysis
