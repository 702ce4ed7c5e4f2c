"""The train / evaluate loops behind ``tools/train_net.py``, built from a LazyConfig.

The config is expected to define (see ``configs/common/``):

- ``model``: instantiates to a detectron2-style model (losses dict in training mode).
- ``dataloader.train``, ``dataloader.test``: instantiate to data loaders;
  ``dataloader.evaluator`` (optional): instantiates to a ``DatasetEvaluator``.
- ``optimizer``: instantiates to an optimizer once ``optimizer.params.model`` is set.
- ``lr_multiplier``: instantiates to an fvcore ``ParamScheduler``.
- ``train``: the options of ``configs/common/train.py``.
"""

from __future__ import annotations

import argparse
import inspect
import logging
import os
from collections.abc import Callable
from typing import Any

import torch
from detectron2.config import LazyConfig, instantiate
from detectron2.engine import default_argument_parser, default_setup, default_writers, hooks
from detectron2.engine.defaults import create_ddp_model
from detectron2.evaluation import DatasetEvaluators, inference_on_dataset, print_csv_format
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger
from detectron2.utils.registry import locate
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import nn

from ..checkpoint.loading import load_model_weights
from .checkpointer import SafeCheckpointer
from .checks import check_num_classes
from .ema import EMAHook, ModelEMA, apply_ema
from .trainer import Trainer

__all__ = [
    "build_ema",
    "build_evaluator",
    "request_error_analysis",
    "default_argument_parser",
    "do_test",
    "draw_seed",
    "do_train",
    "evaluation_output_dir",
    "load_eval_checkpoint",
    "setup",
    "share_cpu_threads",
    "wrap_ddp",
]

logger = logging.getLogger(__name__)


def share_cpu_threads(cfg: DictConfig) -> int:
    """Split the CPU cores between the processes of a multi-process CPU run.

    With ``launch(num_gpus_per_machine=N)`` on a CPU (gloo DDP), each of the N processes would
    otherwise start as many intra-op threads as there are cores, N times too many. Unless
    ``OMP_NUM_THREADS`` says otherwise, each process gets ``cores // N`` threads (at least 1).
    Returns the number of threads now in use.
    """
    local_size = comm.get_local_size()
    if (
        torch.device(cfg.train.device).type == "cpu"
        and local_size > 1
        and "OMP_NUM_THREADS" not in os.environ
    ):
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_size))
    return torch.get_num_threads()


def draw_seed(cfg: DictConfig) -> int | None:
    """Replace a negative ``train.seed`` ("a new seed each run") by a drawn one, so that the
    run's ``config.yaml`` (written by ``default_setup`` after this) records the seed it used and
    ``train.seed=<that seed>`` repeats the run. A seed >= 0 is left as it is. Every process must
    call it: they all get rank 0's draw (detectron2's ``comm.shared_random_seed``), and
    ``default_setup`` then seeds process ``rank`` with ``train.seed + rank``, as for a given seed.

    Returns:
        the seed now in ``cfg.train.seed``, or ``None`` if the config has no ``train.seed``.
    """
    if "train" not in cfg or cfg.train.get("seed", None) is None:
        return None
    if int(cfg.train.seed) < 0:
        cfg.train.seed = int(comm.shared_random_seed())
    return int(cfg.train.seed)


def setup(args: argparse.Namespace, edit: Callable[[DictConfig], None] | None = None) -> DictConfig:
    """Load ``args.config_file``, apply the ``key=value`` overrides in ``args.opts``, then
    ``edit(cfg)`` if given (an entry point's own changes), turn on the evaluator's error
    analysis if ``args.analyze`` (:func:`request_error_analysis`), and run detectron2's
    ``default_setup`` (loggers, environment info, ``config.yaml`` saved to
    ``train.output_dir``, seeding). A negative ``train.seed`` is first replaced by a drawn one
    (:func:`draw_seed`), so ``config.yaml`` and the log name the seed of every run."""
    if not args.config_file or not os.path.isfile(args.config_file):
        raise FileNotFoundError(
            f"--config-file: expected a LazyConfig .py file, got {args.config_file!r}"
        )
    cfg = LazyConfig.load(args.config_file)
    cfg = LazyConfig.apply_overrides(cfg, args.opts)
    if edit is not None:
        edit(cfg)
    if getattr(args, "analyze", False):
        request_error_analysis(cfg)
    share_cpu_threads(cfg)
    requested_seed = cfg.train.get("seed", None) if "train" in cfg else None
    seed = draw_seed(cfg)
    default_setup(cfg, args)
    # default_setup configures the "detectron2" and "fvcore" loggers; add ours.
    setup_logger(
        cfg.train.output_dir, distributed_rank=comm.get_rank(), name="detr_ext", abbrev_name="detr"
    )
    if seed != requested_seed:
        logger.info(
            "train.seed=%s: drew seed %d (train.seed=%d repeats the run)",
            requested_seed,
            seed,
            seed,
        )
    return cfg


def _ema_cfg(cfg: DictConfig) -> DictConfig | dict:
    return cfg.train.get("ema", None) or {}


def build_ema(cfg: DictConfig, model: nn.Module) -> ModelEMA | None:
    """A :class:`ModelEMA` of ``model`` if ``cfg.train.ema.enabled``, else ``None``."""
    ema_cfg = _ema_cfg(cfg)
    if not ema_cfg.get("enabled", False):
        return None
    return ModelEMA(model, decay=ema_cfg.get("decay", 0.9998), device=ema_cfg.get("device"))


def wrap_ddp(model: nn.Module, cfg: DictConfig, **ddp_kwargs: Any) -> nn.Module:
    """``create_ddp_model`` that also works for CPU training (no ``device_ids`` there)."""
    if comm.get_world_size() > 1 and torch.device(cfg.train.device).type == "cpu":
        ddp_kwargs.setdefault("device_ids", None)
    return create_ddp_model(model, **ddp_kwargs)


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


def _accepts(target: Any, argument: str) -> bool:
    if isinstance(target, str):
        target = locate(target)
    try:
        parameters = inspect.signature(target).parameters
    except (TypeError, ValueError):  # a builtin or C callable without a signature
        return False
    return argument in parameters


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
    accepting = [n for n, t in zip(nodes, targets, strict=True) if t and _accepts(t, "analyze")]
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
    if not _accepts(node._target_, "output_dir"):
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
    check_num_classes(cfg, model, splits=("test",))
    results = dict(inference_on_dataset(model, test_loader, build_evaluator(cfg, output_dir)))
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


def load_eval_checkpoint(
    cfg: DictConfig, model: nn.Module, allow_random_weights: bool = False
) -> ModelEMA | None:
    """Load ``cfg.train.init_checkpoint`` into ``model`` for evaluation.

    Loading is strict about what would otherwise leave parts of the model random: a tensor
    whose shape differs from the model's (e.g. a class head trained with another
    ``model.num_classes``) or a checkpoint with none of the model's keys is an error.

    Args:
        cfg: the run's config.
        model: the model built from ``cfg.model``.
        allow_random_weights: with an empty ``train.init_checkpoint``, evaluate the model as
            initialised (a smoke test of the evaluation itself) instead of raising.

    Returns:
        the checkpoint's EMA weights as a :class:`ModelEMA` when ``train.ema.enabled`` and
        the checkpoint has them, else ``None``.

    Raises:
        ValueError: ``train.init_checkpoint`` is empty and ``allow_random_weights`` is False.
        FileNotFoundError: ``train.init_checkpoint`` is a local path that is not a file.
        CheckpointMismatchError: the checkpoint does not fit the model.
    """
    path = cfg.train.get("init_checkpoint", "") or ""
    if not path:
        if not allow_random_weights:
            raise ValueError(
                "evaluation needs trained weights, but train.init_checkpoint is empty; expected "
                "train.init_checkpoint=<path to a checkpoint, e.g. model_final.pth> (to "
                "evaluate a randomly initialised model on purpose, pass --allow-random-weights)"
            )
        logger.warning("train.init_checkpoint is empty: evaluating randomly initialised weights.")
        return None
    extra = load_model_weights(model, path, where="train.init_checkpoint")
    ema = build_ema(cfg, model)
    if ema is None:
        return None
    if "ema" not in extra:
        logger.warning(
            "train.ema.enabled but checkpoint %r has no 'ema' state; evaluating the model "
            "weights only.",
            path,
        )
        return None
    ema.load_state_dict(extra["ema"])
    return ema


def do_train(args: argparse.Namespace, cfg: DictConfig) -> dict:
    """Train ``cfg.model`` for ``cfg.train.max_iter`` iterations with periodic checkpointing,
    evaluation and metric writing; ``args.resume`` continues from the last checkpoint in
    ``cfg.train.output_dir``.

    Returns:
        the results of the last evaluation (the one after the final iteration), as
        :func:`do_test` returns them; ``{}`` if no evaluation ran.
    """
    model = instantiate(cfg.model)
    logger.info("Model:\n%s", model)
    model.to(cfg.train.device)

    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    train_loader = instantiate(cfg.dataloader.train)
    check_num_classes(cfg, model)  # after the train loader: it loaded the train datasets
    ema = build_ema(cfg, model)

    model = wrap_ddp(model, cfg, **cfg.train.ddp)
    clip_grad = cfg.train.get("clip_grad", None)
    clip_grad_params = None
    if clip_grad is not None and clip_grad.get("enabled", False):
        clip_grad_params = OmegaConf.to_container(clip_grad.params, resolve=True)
    trainer = Trainer(
        model,
        train_loader,
        optimizer,
        amp=cfg.train.amp.enabled,
        bf16=cfg.train.get("bf16", False),
        clip_grad_params=clip_grad_params,
        max_consecutive_nonfinite=cfg.train.get("max_consecutive_nonfinite", 5),
    )
    checkpointables = {"ema": ema} if ema is not None else {}
    # Refuses non-finite weights and writes files atomically (a killed run leaves no
    # partial .pth); the trainer names its last checkpoint when it stops on divergence.
    checkpointer = SafeCheckpointer(model, cfg.train.output_dir, trainer=trainer, **checkpointables)
    trainer.checkpointer = checkpointer
    is_main = comm.is_main_process()
    last_results: dict = {}

    def evaluate() -> dict:
        results = do_test(cfg, model, ema=ema)
        last_results.clear()
        last_results.update(results)
        return results

    trainer.register_hooks(
        [
            hooks.IterationTimer(),
            # Before the checkpointer and the evaluation, so both see this step's EMA.
            EMAHook(ema, model) if ema is not None else None,
            hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
            hooks.PeriodicCheckpointer(checkpointer, **cfg.train.checkpointer) if is_main else None,
            hooks.EvalHook(cfg.train.eval_period, evaluate),
            hooks.PeriodicWriter(
                default_writers(cfg.train.output_dir, cfg.train.max_iter),
                period=cfg.train.log_period,
            )
            if is_main
            else None,
        ]
    )

    checkpointer.resume_or_load(cfg.train.init_checkpoint, resume=args.resume)
    if args.resume and checkpointer.has_checkpoint():
        # The checkpoint stores the iteration that just finished.
        start_iter = trainer.iter + 1
    else:
        start_iter = 0
    trainer.train(start_iter, cfg.train.max_iter)
    return dict(last_results)
