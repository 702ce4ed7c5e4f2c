"""Panoptic quality (PQ, SQ, RQ) without panopticapi: detectron2's ``COCOPanopticEvaluator``
computing its metrics with hotcoco.

``dataloader.evaluator = L(COCOPanopticEvaluator)(dataset_name="coco_2017_val_panoptic")``

detectron2's evaluator imports ``panopticapi`` (not on PyPI) for two things: ``id2rgb``, to
write each prediction as a COCO panoptic PNG, and ``pq_compute``. Here :func:`id2rgb` is our
own and ``pq_compute`` is hotcoco's (``hotcoco.panoptic.pq_compute``, panopticapi's signature,
return value and matching rules). The dataset is one registered like detectron2's
``register_coco_panoptic`` (metadata ``panoptic_json``, ``panoptic_root``,
``thing_dataset_id_to_contiguous_id``, ``stuff_dataset_id_to_contiguous_id``); the model gives
``"panoptic_seg": (segment ids [H, W], segments_info)`` per image. Results, the logged table and
the conversion of contiguous category ids to the dataset's ids are detectron2's.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import logging
import os
import tempfile
from collections import OrderedDict
from typing import Any

import numpy as np
from detectron2.evaluation import COCOPanopticEvaluator as _D2COCOPanopticEvaluator
from detectron2.evaluation.panoptic_evaluation import _print_panoptic_results
from detectron2.utils import comm
from detectron2.utils.file_io import PathManager
from PIL import Image

from ..utils.panoptic_ids import id2rgb
from .coco_backend import hotcoco_available

logger = logging.getLogger(__name__)

# A prediction's count of segments of classes the dataset does not have, by class; popped
# before the predictions are written as the COCO panoptic json.
_LEFT_OUT_KEY = "_left_out_segments"

__all__ = ["COCOPanopticEvaluator", "id2rgb"]

_MISSING_HOTCOCO = (
    "COCOPanopticEvaluator computes panoptic quality with hotcoco (hotcoco.panoptic.pq_compute), "
    "which is not installed; `pip install hotcoco`"
)


class COCOPanopticEvaluator(_D2COCOPanopticEvaluator):
    """detectron2's :class:`~detectron2.evaluation.COCOPanopticEvaluator` with hotcoco's
    ``pq_compute`` and no panopticapi.

    Args:
        dataset_name: a dataset registered like detectron2's ``register_coco_panoptic``.
        output_dir: where ``predictions.json`` is kept (the PNGs go to a temporary folder).

    ``evaluate()`` returns ``{"panoptic_seg": {"PQ", "SQ", "RQ", "PQ_th", "SQ_th", "RQ_th",
    "PQ_st", "SQ_st", "RQ_st"}}`` in percent on the main process (None elsewhere) and logs
    detectron2's table.

    Raises:
        ImportError: hotcoco is not installed.
    """

    def __init__(self, dataset_name: str, output_dir: str | None = None) -> None:
        if not hotcoco_available():
            raise ImportError(_MISSING_HOTCOCO)
        super().__init__(dataset_name, output_dir=output_dir)

    def process(self, inputs: list[dict], outputs: list[dict]) -> None:
        """Store each ``output["panoptic_seg"]`` (``[H, W]`` segment ids, 0 = void, and
        ``segments_info`` with contiguous ``category_id`` and ``isthing``) as a PNG and
        ``segments_info`` with the dataset's category ids; ``segments_info=None`` means ids
        ``category * label_divisor + instance`` with -1 for void, as in detectron2."""
        for input, output in zip(inputs, outputs):
            panoptic_img, segments_info = output["panoptic_seg"]
            panoptic_img = panoptic_img.cpu().numpy()
            if segments_info is None:
                label_divisor = self._metadata.label_divisor
                thing_ids = set(self._metadata.thing_dataset_id_to_contiguous_id.values())
                segments_info = [
                    {
                        "id": int(label) + 1,
                        "category_id": int(label // label_divisor),
                        "isthing": int(label // label_divisor) in thing_ids,
                    }
                    for label in np.unique(panoptic_img)
                    if label != -1
                ]
                panoptic_img = panoptic_img + 1  # the COCO format's void is 0
            segments_info, panoptic_img, left_out = self._leave_out_unknown_classes(
                segments_info, panoptic_img
            )
            file_name = os.path.splitext(os.path.basename(input["file_name"]))[0] + ".png"
            with io.BytesIO() as out:
                Image.fromarray(id2rgb(panoptic_img)).save(out, format="PNG")
                png = out.getvalue()
            self._predictions.append(
                {
                    "image_id": input["image_id"],
                    "file_name": file_name,
                    "png_string": png,
                    # Copies: the conversion pops "isthing", the model's output stays as it was.
                    "segments_info": [self._convert_category_id(dict(s)) for s in segments_info],
                    _LEFT_OUT_KEY: left_out,
                }
            )

    def _leave_out_unknown_classes(
        self, segments_info: list[dict], panoptic_img: np.ndarray
    ) -> tuple[list[dict], np.ndarray, dict[int, int]]:
        """The segments whose class the dataset has, the segment ids with the others' pixels
        made void (0), and the count of segments left out per class.

        With ``model.num_classes`` larger than the dataset's categories (allowed, see
        :func:`~detr_ext.engine.checks.check_num_classes`) a segment may have an extra class,
        which has no dataset id. Such a segment matches no ground truth and belongs to no
        category's PQ, so voiding it changes no metric (``pq_compute`` refuses unknown ids).
        Segments without ``isthing`` (a model giving dataset ids itself) are kept as they are.
        """
        left_out: dict[int, int] = {}
        kept = []
        for info in segments_info:
            isthing = info.get("isthing", None)
            known = (
                self._thing_contiguous_id_to_dataset_id
                if isthing
                else self._stuff_contiguous_id_to_dataset_id
            )
            if isthing is None or info["category_id"] in known:
                kept.append(info)
                continue
            category = int(info["category_id"])
            left_out[category] = left_out.get(category, 0) + 1
            panoptic_img = np.where(panoptic_img == info["id"], 0, panoptic_img)
        return kept, panoptic_img, left_out

    def _report_unknown_classes(self) -> None:
        """Pop each prediction's count of segments left out (:meth:`_leave_out_unknown_classes`)
        and warn once, for all processes' predictions together, when there were any."""
        counts: dict[int, int] = {}
        for prediction in self._predictions:
            for category, count in prediction.pop(_LEFT_OUT_KEY, {}).items():
                counts[category] = counts.get(category, 0) + count
        if not counts:
            return
        num_categories = len(
            set(self._thing_contiguous_id_to_dataset_id)
            | set(self._stuff_contiguous_id_to_dataset_id)
        )
        logger.warning(
            "COCOPanopticEvaluator: left out %d predicted segments on %r whose class (%s) is not "
            "one of the dataset's %d categories: model.num_classes is larger than the dataset's "
            "number of categories and the model predicted some of its extra classes. Their "
            "pixels count as void; they match no ground truth, so the metrics are the same "
            "without them.",
            sum(counts.values()),
            self._metadata.name,
            ", ".join(str(category) for category in sorted(counts)),
            num_categories,
        )

    def evaluate(self) -> OrderedDict | None:
        comm.synchronize()
        self._predictions = list(itertools.chain(*comm.gather(self._predictions)))
        if not comm.is_main_process():
            return None
        self._report_unknown_classes()
        try:
            from hotcoco.panoptic import pq_compute
        except ImportError as error:
            raise ImportError(_MISSING_HOTCOCO) from error

        gt_json = PathManager.get_local_path(self._metadata.panoptic_json)
        gt_folder = PathManager.get_local_path(self._metadata.panoptic_root)
        with tempfile.TemporaryDirectory(prefix="panoptic_eval") as pred_dir:
            logger.info("Writing all panoptic predictions to %s ...", pred_dir)
            for prediction in self._predictions:
                with open(os.path.join(pred_dir, prediction["file_name"]), "wb") as f:
                    f.write(prediction.pop("png_string"))
            with open(gt_json) as f:
                json_data = json.load(f)
            json_data["annotations"] = self._predictions
            predictions_json = os.path.join(self._output_dir or pred_dir, "predictions.json")
            with PathManager.open(predictions_json, "w") as f:
                f.write(json.dumps(json_data))
            with contextlib.redirect_stdout(io.StringIO()):
                pq_res = pq_compute(
                    gt_json,
                    PathManager.get_local_path(predictions_json),
                    gt_folder=gt_folder,
                    pred_folder=pred_dir,
                )

        res: dict[str, Any] = {}
        for group, suffix in (("All", ""), ("Things", "_th"), ("Stuff", "_st")):
            for metric in ("pq", "sq", "rq"):
                res[metric.upper() + suffix] = 100 * pq_res[group][metric]
        _print_panoptic_results(pq_res)
        return OrderedDict({"panoptic_seg": res})
