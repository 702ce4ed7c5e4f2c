"""Evaluation behind ``tools/train_net.py``: the test loader and evaluator built from a
LazyConfig, evaluation files under ``<train.output_dir>/inference``, extra test sets, EMA
weights evaluated alongside, and the strict loading of weights for ``--eval-only``."""

from __future__ import annotations

import logging
import os
from typing import Any

from detectron2.config import instantiate
from detectron2.evaluation import DatasetEvaluators, inference_on_dataset, print_csv_format
from fvcore.common.checkpoint import Checkpointer
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import nn

from ..checkpoint.loading import (
    check_checkpoint_path,
    ema_weights_requested,
    load_model_weights,
)
from ..config import ConfigUsageError, accepts_argument
from .checks import check_num_classes
from .ema import ModelEMA, apply_ema
from .prompted import evaluation_category_names

__all__ = [
    "EvalCheckpointNotFoundError",
    "NothingToEvaluateError",
    "build_ema",
    "build_evaluator",
    "do_test",
    "eval_checkpoint_path",
    "evaluation_output_dir",
    "load_eval_checkpoint",
    "request_error_analysis",
]

logger = logging.getLogger(__name__)


class NothingToEvaluateError(ConfigUsageError):
    """An evaluation was asked for without weights to evaluate (an empty
    ``train.init_checkpoint``); the message names the ways on. Tools print it without a
    traceback."""


class EvalCheckpointNotFoundError(FileNotFoundError):
    """The checkpoint an evaluation should load does not exist (a missing
    ``train.init_checkpoint``, or a run folder without the checkpoint ``--resume`` would take);
    the message says which. Tools print it without a traceback."""


def _ema_cfg(cfg: DictConfig) -> DictConfig | dict:
    return cfg.train.get("ema", None) or {}


def build_ema(cfg: DictConfig, model: nn.Module) -> ModelEMA | None:
    """A :class:`ModelEMA` of ``model`` if ``cfg.train.ema.enabled``, else ``None``."""
    ema_cfg = _ema_cfg(cfg)
    if not ema_cfg.get("enabled", False):
        return None
    return ModelEMA(
        model,
        decay=ema_cfg.get("decay", 0.9998),
        device=ema_cfg.get("device"),
        warmup=ema_cfg.get("warmup", 2000),
    )


def evaluation_output_dir(cfg: DictConfig, ema: bool = False) -> str | None:
    """Where the evaluator writes its files (e.g. ``coco_instances_results.json``):
    ``<train.output_dir>/inference``, and ``<train.output_dir>/inference/ema`` for the EMA
    weights; None when ``train.output_dir`` is empty.

    It follows ``train.output_dir`` however that was set (config file or command line), so
    runs with different output folders never overwrite each other's results; a config's own
    ``dataloader.evaluator.output_dir`` is replaced (it is usually a copy of the base
    config's ``train.output_dir``, taken when the base config loaded)."""
    output_dir = cfg.train.get("output_dir", None)
    if not output_dir:
        return None
    folder = os.path.join(str(output_dir), "inference")
    return os.path.join(folder, "ema") if ema else folder


def request_error_analysis(cfg: DictConfig) -> None:
    """Set ``dataloader.evaluator.analyze = True`` (``--analyze`` of the tools): the evaluator
    then writes TIDE errors and a confusion matrix next to its results (see
    :class:`detr_ext.evaluation.COCOEvaluator`).

    A list of evaluators (e.g. box/mask AP plus panoptic quality) gets ``analyze = True`` on
    each entry that takes it.

    Raises:
        ValueError: the config has no evaluator, or none that takes an ``analyze`` argument.
    """
    node = cfg.dataloader.get("evaluator", None)
    nodes = list(node) if isinstance(node, ListConfig) else [node]
    targets = [n.get("_target_", None) if isinstance(n, DictConfig) else None for n in nodes]
    accepting = [
        n for n, t in zip(nodes, targets, strict=True) if t and accepts_argument(t, "analyze")
    ]
    if not accepting:
        raise ValueError(
            "--analyze needs dataloader.evaluator to be detr_ext.evaluation.COCOEvaluator (or "
            "another evaluator with an 'analyze' argument, or a list holding one), got "
            f"{targets[0] if len(targets) == 1 else targets!r}"
        )
    for entry in accepting:
        entry.analyze = True


def build_evaluator(cfg: DictConfig, output_dir: str | None, node: Any = None) -> Any:
    """``instantiate(node)`` (default ``cfg.dataloader.evaluator``) with its ``output_dir`` set
    to ``output_dir`` when the evaluator takes one (``COCOEvaluator`` does); the config itself
    is left unchanged. A list of evaluators becomes detectron2's ``DatasetEvaluators``, each
    entry built this way (their files share ``output_dir``; detectron2's evaluators use
    distinct file names)."""
    if node is None:
        node = cfg.dataloader.evaluator
    if isinstance(node, ListConfig):
        return DatasetEvaluators([build_evaluator(cfg, output_dir, entry) for entry in node])
    if output_dir is None or not isinstance(node, DictConfig) or "_target_" not in node:
        return instantiate(node)
    if not accepts_argument(node._target_, "output_dir"):
        return instantiate(node)
    configured = node.get("output_dir", None)
    if configured is not None and os.path.normpath(str(configured)) != os.path.normpath(output_dir):
        logger.info(
            "dataloader.evaluator.output_dir=%r is replaced by %r (evaluation files follow "
            "train.output_dir).",
            configured,
            output_dir,
        )
    # Resolved while `node` still hangs in `cfg`, so interpolations such as
    # "${..test.dataset.names}" find their targets.
    evaluator_cfg = OmegaConf.to_container(node, resolve=True)
    evaluator_cfg["output_dir"] = output_dir
    return instantiate(evaluator_cfg)


def _evaluate(cfg: DictConfig, model: nn.Module, weights: str, ema: bool = False) -> dict:
    output_dir = evaluation_output_dir(cfg, ema=ema)
    logger.info("Evaluating the %s; evaluation files go to %s.", weights, output_dir)
    test_loader = instantiate(cfg.dataloader.test)
    # After building the loader, which loads the test datasets and so fills their metadata.
    with evaluation_category_names(cfg, model):
        check_num_classes(cfg, model, splits=("test",))
        evaluator = build_evaluator(cfg, output_dir)
        results = dict(inference_on_dataset(model, test_loader, evaluator))
    print_csv_format(results)
    for name, entry in (cfg.dataloader.get("extra_tests") or {}).items():
        results.update(_evaluate_extra_test(cfg, model, str(name), entry, output_dir, results))
    return results


def _evaluate_extra_test(
    cfg: DictConfig,
    model: nn.Module,
    name: str,
    entry: Any,
    output_dir: str | None,
    results: dict,
) -> dict:
    """One entry of ``cfg.dataloader.extra_tests`` (``{"loader": ..., "evaluator": ...}``),
    evaluated like the main test; its files go to ``<output_dir>/<name>``."""
    missing = [key for key in ("loader", "evaluator") if key not in entry]
    if missing:
        raise ValueError(
            f"cfg.dataloader.extra_tests.{name}: expected keys 'loader' and 'evaluator', "
            f"missing {missing}"
        )
    logger.info("Evaluating extra test %r.", name)
    folder = None if output_dir is None else os.path.join(output_dir, name)
    extra = dict(
        inference_on_dataset(
            model, instantiate(entry.loader), build_evaluator(cfg, folder, entry.evaluator)
        )
    )
    clash = sorted(set(extra) & set(results))
    if clash:
        raise ValueError(
            f"cfg.dataloader.extra_tests.{name}: its evaluator reports {clash}, which an earlier "
            "evaluator of this run already reported; expected distinct result names"
        )
    print_csv_format(extra)
    return extra


def do_test(
    cfg: DictConfig, model: nn.Module, eval_only: bool = False, ema: ModelEMA | None = None
) -> dict:
    """Evaluate ``model`` on ``cfg.dataloader.test`` with ``cfg.dataloader.evaluator``, then on
    every entry of the optional ``cfg.dataloader.extra_tests`` (``{name: {"loader": ...,
    "evaluator": ...}}``, e.g. a grounding test set next to the COCO one), whose results are
    merged into the same dict.

    With an ``ema``, the EMA weights are evaluated too and reported under ``results["ema"]``;
    with ``eval_only`` and ``train.ema.use_ema_weights_for_eval_only``, only the EMA weights are.
    The evaluator writes its files to :func:`evaluation_output_dir` (``<train.output_dir>/
    inference``, ``.../inference/ema`` for the EMA weights), whatever the config's evaluator
    says.

    Raises:
        ValueError: the model has fewer classes than a test dataset has categories
            (see :func:`~detr_ext.engine.checks.check_num_classes`).

    Returns:
        the evaluator's nested results dict, e.g. ``{"bbox": {"AP": ...}}``; ``{}`` when the
        config has no evaluator.
    """
    if "evaluator" not in cfg.dataloader:
        logger.warning("cfg.dataloader has no 'evaluator'; skipping evaluation.")
        return {}
    if ema is not None and eval_only and _ema_cfg(cfg).get("use_ema_weights_for_eval_only"):
        with apply_ema(model, ema):
            return _evaluate(cfg, model, "EMA weights", ema=True)
    results = _evaluate(cfg, model, "model weights")
    if ema is not None:
        with apply_ema(model, ema):
            results["ema"] = _evaluate(cfg, model, "EMA weights", ema=True)
    return results


def last_checkpoint_of_run(output_dir: str) -> str:
    """The checkpoint that ``--resume`` would continue in ``output_dir`` (the one its
    ``last_checkpoint`` file names), for ``--eval-only --resume``.

    Raises:
        EvalCheckpointNotFoundError: ``output_dir`` has no ``last_checkpoint`` file, or the
            file it names does not exist.
    """
    # fvcore's Checkpointer reads last_checkpoint as --resume does; it needs no real model.
    checkpointer = Checkpointer(nn.Module(), output_dir)
    if not checkpointer.has_checkpoint():
        raise EvalCheckpointNotFoundError(
            f"--eval-only --resume evaluates the last checkpoint of train.output_dir, but "
            f"{output_dir!r} has no 'last_checkpoint' file (no run saved a checkpoint there); "
            "expected the train.output_dir of a run, or train.init_checkpoint=<file> without "
            "--resume"
        )
    path = checkpointer.get_checkpoint_file()
    if not os.path.isfile(path):
        tag = os.path.join(output_dir, "last_checkpoint")
        name = os.path.relpath(path, output_dir)
        raise EvalCheckpointNotFoundError(
            f"--eval-only --resume: {tag} names {name!r}, which does not exist"
        )
    return path


def eval_checkpoint_path(
    cfg: DictConfig, allow_random_weights: bool = False, resume: bool = False
) -> str:
    """The checkpoint an evaluation of ``cfg`` loads: ``cfg.train.init_checkpoint``, or with
    ``resume`` the last checkpoint of ``cfg.train.output_dir``; ``""`` for randomly initialised
    weights (only with ``allow_random_weights``). It builds no model, so ``train_net`` also
    checks this before it starts several processes (one usage error instead of a traceback
    from each process).

    Raises:
        NothingToEvaluateError: ``train.init_checkpoint`` is empty and
            ``allow_random_weights`` is False.
        EvalCheckpointNotFoundError: ``train.init_checkpoint`` is a local path that is not a
            file, or (``resume``) the run has no checkpoint.
    """
    if resume:
        return last_checkpoint_of_run(cfg.train.output_dir)
    path = cfg.train.get("init_checkpoint", "") or ""
    if not path:
        if allow_random_weights:
            return ""
        raise NothingToEvaluateError(
            "evaluation needs trained weights, but train.init_checkpoint is empty; expected "
            "train.init_checkpoint=<path to a checkpoint, e.g. model_final.pth>, or "
            "--resume to evaluate the last checkpoint of train.output_dir (to evaluate a "
            "randomly initialised model on purpose, pass --allow-random-weights)"
        )
    try:
        return check_checkpoint_path(path, where="train.init_checkpoint")
    except FileNotFoundError as error:
        raise EvalCheckpointNotFoundError(str(error)) from error


def load_eval_checkpoint(
    cfg: DictConfig, model: nn.Module, allow_random_weights: bool = False, resume: bool = False
) -> ModelEMA | None:
    """Load ``cfg.train.init_checkpoint`` into ``model`` for evaluation (with ``resume``: the
    last checkpoint of ``cfg.train.output_dir`` instead, as detectron2's ``resume_or_load``
    would pick it).

    Loading is strict about what would otherwise leave parts of the model random: a tensor
    whose shape differs from the model's (e.g. a class head trained with another
    ``model.num_classes``), a checkpoint with none of the model's keys, or one lacking some
    of them, is an error.

    Args:
        cfg: the run's config.
        model: the model built from ``cfg.model``.
        allow_random_weights: with an empty ``train.init_checkpoint``, evaluate the model as
            initialised (a smoke test of the evaluation itself) instead of raising.

    Returns:
        the checkpoint's EMA weights as a :class:`ModelEMA` when ``train.ema.enabled`` and
        the checkpoint has them, else ``None``.

    Raises:
        NothingToEvaluateError: ``train.init_checkpoint`` is empty and
            ``allow_random_weights`` is False.
        ValueError: ``train.ema.use_ema_weights_for_eval_only`` without ``train.ema.enabled``
            or without EMA weights in the checkpoint.
        EvalCheckpointNotFoundError: ``train.init_checkpoint`` is a local path that is not a
            file, or (``resume``) the run has no checkpoint.
        CheckpointMismatchError: the checkpoint does not fit the model.
    """
    path = eval_checkpoint_path(cfg, allow_random_weights=allow_random_weights, resume=resume)
    if resume:
        logger.info("--eval-only --resume: evaluating %s, the run's last checkpoint.", path)
    if not path:
        logger.warning("train.init_checkpoint is empty: evaluating randomly initialised weights.")
        return None
    ema_only = ema_weights_requested(cfg)
    try:
        extra = load_model_weights(model, path, where="train.init_checkpoint")
    except FileNotFoundError as error:
        raise EvalCheckpointNotFoundError(str(error)) from error
    ema = build_ema(cfg, model)
    if ema is None:
        return None
    if "ema" not in extra and ema_only:
        raise ValueError(
            f"train.ema.use_ema_weights_for_eval_only=True, but checkpoint {path!r} has no "
            f"'ema' state (it has {sorted(extra)}): expected a checkpoint of a run trained "
            "with train.ema.enabled=True, or set use_ema_weights_for_eval_only=False to "
            "evaluate its model weights"
        )
    if "ema" not in extra:
        logger.warning(
            "train.ema.enabled but checkpoint %r has no 'ema' state; evaluating the model "
            "weights only.",
            path,
        )
        return None
    ema.load_state_dict(extra["ema"])
    return ema
