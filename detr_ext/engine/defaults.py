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
import logging
import os
from collections.abc import Callable
from typing import Any

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import LazyConfig, instantiate
from detectron2.engine import default_argument_parser, default_setup, default_writers, hooks
from detectron2.engine.defaults import create_ddp_model
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger
from omegaconf import DictConfig, OmegaConf
from torch import nn

from .ema import EMAHook, ModelEMA, apply_ema
from .trainer import Trainer

__all__ = [
    "build_ema",
    "default_argument_parser",
    "do_test",
    "do_train",
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


def setup(args: argparse.Namespace, edit: Callable[[DictConfig], None] | None = None) -> DictConfig:
    """Load ``args.config_file``, apply the ``key=value`` overrides in ``args.opts``, then
    ``edit(cfg)`` if given (an entry point's own changes), and run detectron2's
    ``default_setup`` (loggers, environment info, ``config.yaml`` saved to
    ``train.output_dir``, seeding)."""
    if not args.config_file or not os.path.isfile(args.config_file):
        raise FileNotFoundError(
            f"--config-file: expected a LazyConfig .py file, got {args.config_file!r}"
        )
    cfg = LazyConfig.load(args.config_file)
    cfg = LazyConfig.apply_overrides(cfg, args.opts)
    if edit is not None:
        edit(cfg)
    share_cpu_threads(cfg)
    default_setup(cfg, args)
    # default_setup configures the "detectron2" and "fvcore" loggers; add ours.
    setup_logger(
        cfg.train.output_dir, distributed_rank=comm.get_rank(), name="detr_ext", abbrev_name="detr"
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


def _evaluate(cfg: DictConfig, model: nn.Module, weights: str) -> dict:
    logger.info("Evaluating the %s.", weights)
    results = inference_on_dataset(
        model, instantiate(cfg.dataloader.test), instantiate(cfg.dataloader.evaluator)
    )
    print_csv_format(results)
    return dict(results)


def do_test(
    cfg: DictConfig, model: nn.Module, eval_only: bool = False, ema: ModelEMA | None = None
) -> dict:
    """Evaluate ``model`` on ``cfg.dataloader.test`` with ``cfg.dataloader.evaluator``.

    With an ``ema``, the EMA weights are evaluated too and reported under ``results["ema"]``;
    with ``eval_only`` and ``train.ema.use_ema_weights_for_eval_only``, only the EMA weights are.

    Returns:
        the evaluator's nested results dict, e.g. ``{"bbox": {"AP": ...}}``; ``{}`` when the
        config has no evaluator.
    """
    if "evaluator" not in cfg.dataloader:
        logger.warning("cfg.dataloader has no 'evaluator'; skipping evaluation.")
        return {}
    if ema is not None and eval_only and _ema_cfg(cfg).get("use_ema_weights_for_eval_only"):
        with apply_ema(model, ema):
            return _evaluate(cfg, model, "EMA weights")
    results = _evaluate(cfg, model, "model weights")
    if ema is not None:
        with apply_ema(model, ema):
            results["ema"] = _evaluate(cfg, model, "EMA weights")
    return results


def load_eval_checkpoint(cfg: DictConfig, model: nn.Module) -> ModelEMA | None:
    """Load ``cfg.train.init_checkpoint`` into ``model`` for evaluation.

    Returns the checkpoint's EMA weights as a :class:`ModelEMA` when ``train.ema.enabled`` and
    the checkpoint has them, else ``None``.
    """
    extra = DetectionCheckpointer(model).load(cfg.train.init_checkpoint, checkpointables=[])
    ema = build_ema(cfg, model)
    if ema is None:
        return None
    if "ema" not in extra:
        logger.warning(
            "train.ema.enabled but checkpoint %r has no 'ema' state; evaluating the model "
            "weights only.",
            cfg.train.init_checkpoint,
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
    )
    checkpointables = {"ema": ema} if ema is not None else {}
    checkpointer = DetectionCheckpointer(
        model, cfg.train.output_dir, trainer=trainer, **checkpointables
    )
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
