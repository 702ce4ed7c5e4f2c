"""detectron2's ``COCOEvaluator`` with a choice of metric backend and optional error analysis.

``dataloader.evaluator = L(COCOEvaluator)(dataset_name=..., backend="auto", analyze=False)``

- ``backend``: ``"auto"`` (hotcoco when installed, else pycocotools), ``"hotcoco"`` or
  ``"pycocotools"``; see :mod:`detr_ext.evaluation.coco_backend` for how they differ.
- ``analyze``: also write a TIDE error breakdown and a confusion matrix per task (JSON and a
  PNG) to ``<output_dir>/analysis/`` (``tools/train_net.py --analyze`` sets it). Needs hotcoco.

Everything else is detectron2's evaluator: the results dict, the logged tables, the per-category
AP and the ``copypaste`` lines have the same keys and format whichever backend computed them.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
from collections import Counter
from collections.abc import Collection
from typing import Any

from detectron2.evaluation import COCOEvaluator as _D2COCOEvaluator
from detectron2.evaluation.coco_evaluation import _evaluate_predictions_on_coco
from detectron2.utils.file_io import PathManager
from pycocotools.cocoeval import COCOeval

from .analysis import write_error_analysis
from .coco_backend import evaluate_on_coco, hotcoco_available, load_coco_gt, resolve_backend

logger = logging.getLogger(__name__)

_SHOWN_CLASSES = 20  # class indices named in the warning about predictions left out

__all__ = ["COCOEvaluator"]


class COCOEvaluator(_D2COCOEvaluator):
    """detectron2's :class:`~detectron2.evaluation.COCOEvaluator` computing its metrics with
    ``backend`` and, with ``analyze=True``, writing an error analysis.

    Args:
        dataset_name, tasks, distributed, output_dir, max_dets_per_image, kpt_oks_sigmas,
            allow_cached_coco: as in detectron2 (``use_fast_impl`` does not exist here:
            detectron2's fast C++ evaluator lives in its compiled ``_C``; hotcoco replaces it).
        backend: ``"auto"``, ``"hotcoco"`` or ``"pycocotools"``.
        analyze: write TIDE errors and a confusion matrix (needs hotcoco and ``output_dir``).
        drop_unknown_classes: predictions of classes the dataset does not have (a model with
            more classes than the dataset has categories) are always left out of the scoring
            and counted; by default a warning reports them, with True an info line (a
            detector meant to predict more classes than it is scored on, e.g. DETR's panoptic
            box stage, things and stuff, scored on the things of COCO's instances json).

    Raises:
        ValueError: unknown ``backend``; ``analyze`` without an ``output_dir``.
        ImportError: ``backend="hotcoco"`` or ``analyze=True`` without hotcoco installed.
    """

    def __init__(
        self,
        dataset_name: str,
        tasks: tuple[str, ...] | None = None,
        distributed: bool = True,
        output_dir: str | None = None,
        *,
        max_dets_per_image: int | None = None,
        kpt_oks_sigmas: tuple[float, ...] = (),
        allow_cached_coco: bool = True,
        backend: str = "auto",
        analyze: bool = False,
        drop_unknown_classes: bool = False,
    ) -> None:
        self._backend = resolve_backend(backend)
        if analyze and not hotcoco_available():
            raise ImportError(
                "COCOEvaluator(analyze=True) computes TIDE errors and the confusion matrix with "
                "hotcoco, which is not installed; `pip install hotcoco` or set analyze=False"
            )
        if analyze and not output_dir:
            raise ValueError(
                "COCOEvaluator(analyze=True) writes its analysis to output_dir, got "
                f"output_dir={output_dir!r}"
            )
        self._analyze = analyze
        self._drop_unknown_classes = drop_unknown_classes
        super().__init__(
            dataset_name,
            tasks=tasks,
            distributed=distributed,
            output_dir=output_dir,
            max_dets_per_image=max_dets_per_image,
            use_fast_impl=False,
            kpt_oks_sigmas=kpt_oks_sigmas,
            allow_cached_coco=allow_cached_coco,
        )
        self._hotcoco_gt = None

    @property
    def backend(self) -> str:
        """The backend that computes the metrics: ``"hotcoco"`` or ``"pycocotools"``."""
        return self._backend

    def _gt_for(self, backend: str) -> Any:
        if backend == "pycocotools":
            return self._coco_api  # loaded by detectron2's constructor
        if self._hotcoco_gt is None:
            json_file = PathManager.get_local_path(self._metadata.json_file)
            self._hotcoco_gt = load_coco_gt(json_file, "hotcoco")
        return self._hotcoco_gt

    def _unmap_category_ids(self, coco_results: list[dict]) -> None:
        """Contiguous class ids (model outputs) back to the dataset's category ids, in place.

        Predictions of a class the dataset does not have are removed first: with
        ``model.num_classes`` larger than the dataset's number of categories (allowed, see
        :func:`~detr_ext.engine.checks.check_num_classes`), a query may still pick an extra
        class. Such a prediction cannot match any ground truth, so leaving it out changes no
        metric. They are counted and reported once per evaluation (a warning, or an info line
        with ``drop_unknown_classes=True``). Called on the gathered predictions of all
        processes, so the count covers the whole test set.
        """
        reverse = self._contiguous_to_dataset_ids()
        if reverse is None:
            return
        kept = [r for r in coco_results if r["category_id"] in reverse]
        if len(kept) < len(coco_results):
            self._report_unknown_classes(coco_results, reverse.keys())
            coco_results[:] = kept
        for result in coco_results:
            result["category_id"] = reverse[result["category_id"]]

    def _contiguous_to_dataset_ids(self) -> dict[int, int] | None:
        """Model class index -> the dataset's category id: the inverse of the metadata's
        ``thing_dataset_id_to_contiguous_id``; without one, the identity over the indices of
        ``thing_classes`` (detectron2 then writes the ground truth with these ids); None when
        the metadata has neither (nothing is mapped or dropped)."""
        mapping = self._metadata.get("thing_dataset_id_to_contiguous_id", None)
        if mapping is not None:
            return {int(contiguous): dataset_id for dataset_id, contiguous in mapping.items()}
        classes = self._metadata.get("thing_classes", None)
        if classes is None:
            return None
        return {index: index for index in range(len(classes))}

    def _report_unknown_classes(self, coco_results: list[dict], known: Collection[int]) -> None:
        """One log line about the predictions of :meth:`_unmap_category_ids` whose class is
        not in ``known`` (the dataset's class indices): how many, which classes."""
        counts = Counter(r["category_id"] for r in coco_results if r["category_id"] not in known)
        classes = sorted(counts)
        shown = ", ".join(str(c) for c in classes[:_SHOWN_CLASSES])
        if len(classes) > _SHOWN_CLASSES:
            shown += f", ... ({len(classes)} classes)"
        num_categories = len(known)
        message = (
            f"COCOEvaluator: left out {sum(counts.values())} of {len(coco_results)} predictions "
            f"on {self._metadata.name!r} whose class ({shown}) is not one of the dataset's "
            f"{num_categories} categories"
        )
        if self._drop_unknown_classes:
            logger.info("%s (drop_unknown_classes=True).", message)
            return
        logger.warning(
            "%s: model.num_classes is larger than the dataset's number of categories and the "
            "model predicted some of its extra classes. These predictions match no ground "
            "truth, so the metrics are the same without them (they are not written to "
            "coco_instances_results.json). model.num_classes=%d gives a model of the dataset's "
            "categories only.",
            message,
            num_categories,
        )

    def _eval_predictions(self, predictions: list[dict], img_ids: list[int] | None = None):
        """Fill ``self._results[task]`` for each task, with :attr:`backend`."""
        coco_results = list(itertools.chain(*[x["instances"] for x in predictions]))
        tasks = self._tasks or self._tasks_from_predictions(coco_results)
        self._unmap_category_ids(coco_results)

        if self._output_dir:
            file_path = os.path.join(self._output_dir, "coco_instances_results.json")
            logger.info("Saving results to %s", file_path)
            PathManager.mkdirs(self._output_dir)
            with PathManager.open(file_path, "w") as f:
                json.dump(coco_results, f)

        if not self._do_evaluation:
            logger.info("Annotations are not available for evaluation.")
            return

        for task in sorted(tasks):
            if task not in {"bbox", "segm", "keypoints"}:
                raise ValueError(f"unknown COCO task {task!r}; expected bbox, segm or keypoints")
            # hotcoco evaluates boxes and masks here; keypoints keep detectron2's sigmas path.
            backend = "pycocotools" if task == "keypoints" else self._backend
            logger.info("Evaluating %s predictions with %s ...", task, backend)
            coco_eval = None
            if coco_results:  # the COCO APIs do not handle empty results
                coco_eval = self._evaluate_task(coco_results, task, backend, img_ids)
            self._results[task] = self._derive_coco_results(
                coco_eval, task, class_names=self._metadata.get("thing_classes")
            )
            if self._analyze and coco_eval is not None and task != "keypoints":
                if backend != "hotcoco":
                    coco_eval = evaluate_on_coco(
                        self._gt_for("hotcoco"), coco_results, task, "hotcoco", img_ids,
                        self._max_dets_per_image, print_summary=False,
                    )  # fmt: skip
                write_error_analysis(
                    coco_eval, os.path.join(self._output_dir, "analysis"), task, self._metadata
                )

    def _evaluate_task(self, coco_results, task, backend, img_ids):
        if task == "keypoints":
            return _evaluate_predictions_on_coco(
                self._coco_api,
                coco_results,
                task,
                kpt_oks_sigmas=self._kpt_oks_sigmas,
                cocoeval_fn=COCOeval,
                img_ids=img_ids,
                max_dets_per_image=self._max_dets_per_image,
            )
        return evaluate_on_coco(
            self._gt_for(backend), coco_results, task, backend, img_ids, self._max_dets_per_image
        )
