"""Phrase-grounding recall: for each (image, phrase) with ground truth, does one of the model's
k best boxes for that phrase hit a ground-truth box of it?

``L(GroundingEvaluator)(dataset_name="shapes_grounding_val")``

The dataset's records are detectron2 dicts whose annotations' ``category_id`` is the phrase
index in the record's prompt (``detr_ext.data.datasets.shapes_grounding``); the model's
``pred_classes`` are phrase indices of the same prompt. Dicts without a prompt work too: the
"phrase" is then the class index.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from typing import Any

import torch
from detectron2.data import DatasetCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.structures import Boxes, BoxMode, pairwise_iou
from detectron2.utils import comm
from detectron2.utils.logger import create_small_table

logger = logging.getLogger(__name__)

__all__ = ["GroundingEvaluator"]

_PREDICTION_FIELDS = ("pred_boxes", "scores", "pred_classes")


class GroundingEvaluator(DatasetEvaluator):
    """Recall@k of phrase grounding over the images the model was run on.

    For each evaluated image and each phrase index with at least one non-crowd ground-truth box,
    the detections with ``pred_classes == phrase`` are ranked by score; the pair counts as a hit
    at k when one of the first k boxes has IoU >= ``iou_threshold`` with a ground-truth box of
    that phrase. A phrase with ground truth but no detection is a miss; detections of phrases
    without ground truth (the prompt's negatives) are ignored.

    Args:
        dataset_name: a ``DatasetCatalog`` name; its records give the ground truth by
            ``image_id``, boxes in original image coordinates.
        iou_threshold: IoU a box needs to hit, in (0, 1].
        top_k: the ranks k to report, as ``"R@k"``.
        distributed: gather the predictions of all ranks on the main process.

    ``evaluate()`` returns ``{"grounding": {"R@1": %, "R@5": %, "num_phrases": n}}`` (recalls in
    percent, NaN without any phrase) on the main process, ``{}`` elsewhere.
    """

    def __init__(
        self,
        dataset_name: str,
        iou_threshold: float = 0.5,
        top_k: Sequence[int] = (1, 5),
        distributed: bool = True,
    ) -> None:
        if not 0.0 < iou_threshold <= 1.0:
            raise ValueError(
                f"GroundingEvaluator: iou_threshold must be in (0, 1], got {iou_threshold!r}"
            )
        top_k = tuple(top_k)
        if not top_k or not all(isinstance(k, int) and k >= 1 for k in top_k):
            raise ValueError(
                f"GroundingEvaluator: top_k must be a non-empty list of ints >= 1, got {top_k!r}"
            )
        self._dataset_name = dataset_name
        self._iou_threshold = float(iou_threshold)
        self._top_k = tuple(sorted(set(top_k)))
        self._distributed = distributed
        self._predictions: list[dict[str, Any]] = []

    def reset(self) -> None:
        self._predictions = []

    def process(self, inputs: list[dict], outputs: list[dict]) -> None:
        """Keep, per image and predicted phrase, the ``max(top_k)`` best boxes (on the CPU)."""
        max_k = self._top_k[-1]
        for index, (model_input, output) in enumerate(zip(inputs, outputs, strict=True)):
            if "image_id" not in model_input:
                raise KeyError(
                    f"GroundingEvaluator: inputs[{index}] has no 'image_id' (keys "
                    f"{sorted(model_input)}); the test loader's records must carry one"
                )
            if "instances" not in output:
                raise KeyError(
                    f"GroundingEvaluator: outputs[{index}] (image_id "
                    f"{model_input['image_id']}) has no 'instances', got keys {sorted(output)}"
                )
            instances = output["instances"].to("cpu")
            missing = [f for f in _PREDICTION_FIELDS if not instances.has(f)]
            if missing:
                raise KeyError(
                    f"GroundingEvaluator: outputs[{index}]['instances'] lacks {missing}, has "
                    f"{sorted(instances.get_fields())}"
                )
            boxes = instances.pred_boxes.tensor.float()
            scores = instances.scores.float()
            classes = instances.pred_classes.long()
            # Stable: equal scores keep the model's order, so the ranking is reproducible.
            order = torch.sort(scores, descending=True, stable=True).indices
            per_phrase = {}
            for phrase in classes.unique().tolist():
                ranked = order[classes[order] == phrase][:max_k]
                per_phrase[phrase] = boxes[ranked]
            self._predictions.append({"image_id": model_input["image_id"], "boxes": per_phrase})

    def evaluate(self) -> dict[str, dict[str, float]]:
        if self._distributed:
            comm.synchronize()
            gathered = comm.gather(self._predictions, dst=0)
            if not comm.is_main_process():
                return {}
            predictions = list(itertools.chain(*gathered))
        else:
            predictions = self._predictions
        if not predictions:
            logger.warning("GroundingEvaluator: no predictions were processed; nothing to report.")
            return {}

        gt_boxes = self._ground_truth()
        first_hit_ranks = []  # per (image, phrase) with ground truth; None = no hit in top max_k
        # An image seen twice (e.g. padded distributed sampling) is counted once.
        by_image = {p["image_id"]: p["boxes"] for p in predictions}
        for image_id, predicted in by_image.items():
            if image_id not in gt_boxes:
                raise KeyError(
                    f"GroundingEvaluator: predictions for image_id {image_id!r}, which dataset "
                    f"{self._dataset_name!r} does not contain"
                )
            for phrase, phrase_gt in gt_boxes[image_id].items():
                first_hit_ranks.append(self._first_hit_rank(predicted.get(phrase), phrase_gt))

        num_phrases = len(first_hit_ranks)
        metrics: dict[str, float] = {}
        for k in self._top_k:
            hits = sum(rank is not None and rank < k for rank in first_hit_ranks)
            metrics[f"R@{k}"] = 100.0 * hits / num_phrases if num_phrases else float("nan")
        metrics["num_phrases"] = num_phrases
        if not num_phrases:
            logger.warning(
                "GroundingEvaluator: the %d evaluated images of %r have no ground-truth phrase.",
                len(by_image),
                self._dataset_name,
            )
        logger.info(
            "Grounding recall on %s (IoU >= %.2f), %d images:\n%s",
            self._dataset_name,
            self._iou_threshold,
            len(by_image),
            create_small_table(metrics),
        )
        return {"grounding": metrics}

    def _first_hit_rank(self, predicted: torch.Tensor | None, gt: torch.Tensor) -> int | None:
        """Rank (0-based) of the first of ``predicted`` [K, 4] (best first) whose IoU with a
        box of ``gt`` [G, 4] reaches the threshold; None when none does."""
        if predicted is None or len(predicted) == 0:
            return None
        iou = pairwise_iou(Boxes(predicted), Boxes(gt))  # [K, G]
        hits = torch.nonzero(iou.max(dim=1).values >= self._iou_threshold)
        return int(hits[0, 0]) if len(hits) else None

    def _ground_truth(self) -> dict[Any, dict[int, torch.Tensor]]:
        """image_id -> phrase index -> non-crowd gt boxes XYXY_ABS [G, 4]."""
        gt: dict[Any, dict[int, torch.Tensor]] = {}
        for record in DatasetCatalog.get(self._dataset_name):
            per_phrase: dict[int, list[list[float]]] = {}
            for annotation in record.get("annotations", []):
                if annotation.get("iscrowd", 0):
                    continue
                box = BoxMode.convert(
                    list(annotation["bbox"]), annotation["bbox_mode"], BoxMode.XYXY_ABS
                )
                per_phrase.setdefault(int(annotation["category_id"]), []).append(box)
            gt[record["image_id"]] = {
                phrase: torch.tensor(boxes, dtype=torch.float32)
                for phrase, boxes in per_phrase.items()
            }
        return gt
