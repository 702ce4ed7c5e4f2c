"""The training loop behind ``tools/train_net.py``, built from a LazyConfig, and the setup of
a run (config, overrides, seed, loggers); the evaluation is in :mod:`.evaluation`.

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
import contextlib
import gc
import logging
import os
import time
from collections.abc import Callable
from typing import Any

import torch
from detectron2.config import LazyConfig, instantiate
from detectron2.engine import default_argument_parser as d2_default_argument_parser
from detectron2.engine import default_setup, default_writers, hooks
from detectron2.engine.defaults import create_ddp_model
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger
from omegaconf import DictConfig, OmegaConf
from torch import nn

from ..config import check_overrides
from ..data.datasets.coco_format import registration_warnings
from .checkpointer import PeriodicCheckpointer, SafeCheckpointer
from .checks import check_category_consistency, check_num_classes
from .data_stream import DataStreamState, build_train_loader
from .ema import EMAHook, unwrap_model
from .evaluation import build_ema, do_test, request_error_analysis
from .evaluation_context import main_process_buffers, preserved_random_states
from .input_format import check_input_format
from .output_dir import (
    LAST_CHECKPOINT_FILE,
    check_new_run_output_dir,
    keep_run_config,
    set_aside_earlier_run,
)
from .prompted import check_training_category_names, text_prompted_model
from .random_states import GatherRandomStatesHook, RandomStates
from .resume import (
    check_resume_iteration,
    configured_hyperparameters,
    restore_configured_hyperparameters,
)
from .seeds import draw_seed, keep_recorded_seed, seed_override_ignored
from .train_options import check_train_options
from .trainer import Trainer

__all__ = [
    "default_argument_parser",
    "do_train",
    "leave_process_group",
    "setup",
    "share_cpu_threads",
    "wrap_ddp",
]

logger = logging.getLogger(__name__)


_EPILOG = """
Examples:
  {prog} --config-file projects/dino/configs/dino_shapes.py train.output_dir=output/my_run
  {prog} --config-file my_dino.py optimizer.lr=5e-5 train.max_iter=20000  # key=value overrides
  {prog} --config-file my_dino.py --resume                    # continue the run's last checkpoint
  {prog} --config-file my_dino.py --overwrite                 # replace the run in its output_dir
  {prog} --config-file my_dino.py --eval-only train.init_checkpoint=output/model_final.pth
  {prog} --config-file my_dino.py --num-gpus 8                # one process per GPU
  (one machine: the processes meet on a free port unless --dist-url is given)

Several machines:
  (machine 0) {prog} --config-file my_dino.py --num-gpus 8 --num-machines 2 --machine-rank 0 \\
                  --dist-url tcp://<machine 0 address>:<port>
  (machine 1) the same with --machine-rank 1
"""

_RESUME_HELP = (
    "continue the run in train.output_dir from its last checkpoint (weights, EMA, optimizer "
    "state, iteration and training data stream; the optimizer settings and schedule come from "
    "the config); with --eval-only, evaluate that checkpoint instead of train.init_checkpoint"
)


def default_argument_parser(epilog: str | None = None) -> argparse.ArgumentParser:
    """detectron2's ``default_argument_parser`` (``--config-file``, ``--resume``,
    ``--eval-only``, ``--num-gpus``, ``--num-machines``, ``--machine-rank``, ``--dist-url``,
    ``key=value`` overrides) with examples and a ``--resume`` help that describe this project's
    LazyConfig tools (detectron2's show yacs ``KEY VALUE`` overrides, which fail here)."""
    import sys

    prog = os.path.basename(sys.argv[0]) or "train_net.py"
    parser = d2_default_argument_parser(epilog=epilog or _EPILOG.format(prog=prog))
    for action in parser._actions:
        if "--resume" in action.option_strings:
            action.help = _RESUME_HELP
        elif action.dest == "opts":
            action.help = "config overrides, key=value (e.g. train.max_iter=100 optimizer.lr=1e-4)"
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="start a new run in train.output_dir even though it holds the checkpoints of an "
        "earlier run, replacing them (without it, such a run is refused: --resume continues it)",
    )
    return parser


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
    ``edit(cfg)`` if given (an entry point's own changes), turn on the evaluator's error
    analysis if ``args.analyze`` (:func:`request_error_analysis`), and run detectron2's
    ``default_setup`` (loggers, environment info, ``config.yaml`` saved to
    ``train.output_dir``, seeding). A negative ``train.seed`` is first replaced by a drawn one
    (:func:`draw_seed`), so ``config.yaml`` and the log name the seed of every run; resuming or
    evaluating a run keeps the seed its ``config.yaml`` records (:func:`keep_recorded_seed`).
    A new run (neither ``args.resume`` nor ``args.eval_only``) in a ``train.output_dir`` that
    holds another run's checkpoints is refused before anything is written, unless
    ``args.overwrite`` (:func:`~detr_ext.engine.output_dir.check_new_run_output_dir`)."""
    if not args.config_file or not os.path.isfile(args.config_file):
        raise FileNotFoundError(
            f"--config-file: expected a LazyConfig .py file, got {args.config_file!r}"
        )
    cfg = LazyConfig.load(args.config_file)
    cfg = LazyConfig.apply_overrides(cfg, check_overrides(args.opts))
    if edit is not None:
        edit(cfg)
    if getattr(args, "analyze", False):
        request_error_analysis(cfg)
    if "train" in cfg:
        check_train_options(cfg.train)
    check_input_format(cfg)
    share_cpu_threads(cfg)
    continuing = getattr(args, "resume", False) or getattr(args, "eval_only", False)
    replaced = None
    if "train" in cfg and not continuing:
        replaced = check_new_run_output_dir(
            cfg.train.get("output_dir", ""), overwrite=getattr(args, "overwrite", False)
        )
    set_aside = None
    if replaced is not None and comm.is_main_process():
        set_aside = set_aside_earlier_run(cfg.train.output_dir)
    requested_seed = cfg.train.get("seed", None) if "train" in cfg else None
    kept_seed = keep_recorded_seed(cfg, args)
    seed = draw_seed(cfg)
    evaluating = getattr(args, "eval_only", False) and "train" in cfg and comm.is_main_process()
    with keep_run_config(cfg.train.output_dir) if evaluating else contextlib.nullcontext():
        default_setup(cfg, args)
    # default_setup configures the "detectron2" and "fvcore" loggers; add ours.
    setup_logger(
        cfg.train.output_dir, distributed_rank=comm.get_rank(), name="detr_ext", abbrev_name="detr"
    )
    # The config registered its datasets before log.txt existed: their warnings go there too.
    for name, messages in registration_warnings().items():
        logger.warning(
            "Dataset %r was repaired or warned about when the config registered it:\n  %s",
            name,
            "\n  ".join(messages),
        )
    if set_aside is not None:
        logger.warning(
            "This new run replaces the run in %s (its last checkpoint was %s); that run's "
            "checkpoints, metrics, events, config.yaml and inference/ are now in %s",
            cfg.train.output_dir,
            replaced,
            set_aside,
        )
    if kept_seed is not None:
        what = "evaluated" if getattr(args, "eval_only", False) else "resumed"
        record = os.path.join(cfg.train.output_dir, "config.yaml")
        if seed_override_ignored(args, kept_seed):
            logger.warning(
                "train.seed=%s from the command line is ignored: keeping seed %d, which %s "
                "records for the run being %s (a resumed run continues the checkpoint's random "
                "states and data stream; the seed would change only the record)",
                requested_seed,
                kept_seed,
                record,
                what,
            )
        else:
            logger.info(
                "train.seed=%s: keeping seed %d, which %s records for the run being %s",
                requested_seed,
                kept_seed,
                record,
                what,
            )
    elif seed != requested_seed and getattr(args, "eval_only", False):
        logger.info("train.seed=%s: drew seed %d for this evaluation", requested_seed, seed)
    elif seed != requested_seed:
        logger.info(
            "train.seed=%s: drew seed %d (train.seed=%d repeats the run)",
            requested_seed,
            seed,
            seed,
        )
    return cfg


def leave_process_group() -> None:
    """At the end of a launched process: wait for the others, then destroy the process groups
    and stop their threads. A no-op outside a distributed run.

    ``destroy_process_group`` does not stop a gloo group that Python still references, and
    detectron2 references two: its local group (``comm._LOCAL_PROCESS_GROUP``, from
    ``launch``) and WORLD (cached by ``comm._get_global_gloo_group``, which ``all_gather``
    fills). Their worker threads then outlived ``main``; one still releasing the last
    barrier's work while the interpreter finalized could not take the GIL, Python ended it
    with ``pthread_exit``, and that unwinding through a ``noexcept`` destructor aborted the
    process ("terminate called without an active exception", SIGABRT) after a finished run.
    Dropping the references (and collecting the cycles of a DDP model that holds a group)
    destroys the groups here, which joins their threads while Python is fully alive."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        comm.synchronize()
        torch.distributed.destroy_process_group()
        if hasattr(comm, "_LOCAL_PROCESS_GROUP"):
            comm._LOCAL_PROCESS_GROUP = None
        for cached in ("_get_global_gloo_group", "create_local_process_group"):
            cache_clear = getattr(getattr(comm, cached, None), "cache_clear", None)
            if cache_clear is not None:
                cache_clear()
        gc.collect()


def wrap_ddp(model: nn.Module, cfg: DictConfig, **ddp_kwargs: Any) -> nn.Module:
    """``create_ddp_model`` that also works for CPU training (no ``device_ids`` there)."""
    if comm.get_world_size() > 1 and torch.device(cfg.train.device).type == "cpu":
        ddp_kwargs.setdefault("device_ids", None)
    return create_ddp_model(model, **ddp_kwargs)


def do_train(
    args: argparse.Namespace, cfg: DictConfig, timings: dict[str, float] | None = None
) -> dict:
    """Train ``cfg.model`` for ``cfg.train.max_iter`` iterations with periodic checkpointing,
    evaluation and metric writing; ``args.resume`` continues from the last checkpoint in
    ``cfg.train.output_dir``.

    Args:
        args: the parsed command line (``resume`` is used).
        cfg: the run's config.
        timings: if given, ``timings["eval_seconds"]`` is set to the duration of the last
            evaluation (the one after the final iteration, part of the training time), and
            ``timings["start_iter"]`` to the iteration this run started at (0, or the one after
            the checkpoint that ``--resume`` continued).

    Returns:
        the results of the last evaluation (the one after the final iteration), as
        :func:`do_test` returns them; ``{}`` if no evaluation ran.
    """
    model = instantiate(cfg.model)
    logger.info("Model:\n%s", model)
    model.to(cfg.train.device)

    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    train_loader, sampler = build_train_loader(cfg)
    # After the train loader: it loaded the train datasets. A text-prompted model is
    # evaluated with the test set's own category names (engine/prompted.py): only its
    # training set has to fit it.
    if text_prompted_model(model) is None:
        check_num_classes(cfg, model)
        check_category_consistency(cfg, model)
    else:
        check_training_category_names(cfg, model)
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
        max_consecutive_overflows=cfg.train.amp.get("max_consecutive_overflows", 30),
        accumulation_steps=cfg.train.get("grad_accumulation_steps", 1),
    )
    checkpointables: dict[str, Any] = {"ema": ema} if ema is not None else {}
    # Every process's random generators at each checkpoint, put back by --resume.
    random_states = RandomStates(cfg.train.get("seed", None))
    checkpointables["random_states"] = random_states
    data_stream = None
    if sampler is not None:  # checkpoints record the stream position; --resume continues it
        images_per_step = cfg.dataloader.train.total_batch_size * trainer.accumulation_steps
        data_stream = DataStreamState(sampler, images_per_step, trainer)
        checkpointables["data_stream"] = data_stream
    # Refuses non-finite weights and writes files atomically (a killed run leaves no
    # partial .pth); the trainer names its last checkpoint when it stops on divergence.
    checkpointer = SafeCheckpointer(model, cfg.train.output_dir, trainer=trainer, **checkpointables)
    trainer.checkpointer = checkpointer
    is_main = comm.is_main_process()
    last_results: dict = {}

    def evaluate() -> dict:
        start = time.perf_counter()
        # The unwrapped model: DDP's forward may broadcast buffers (train.ddp.broadcast_buffers),
        # a collective that a process with fewer test images than the others never joins. With
        # the main process's buffers (those the checkpoint holds); training's generators and
        # buffers are left as they were (evaluation_context.py).
        with preserved_random_states(), main_process_buffers(model, ema):
            results = do_test(cfg, unwrap_model(model), ema=ema)
        if timings is not None:
            timings["eval_seconds"] = time.perf_counter() - start
        last_results.clear()
        last_results.update(results)
        return results

    # Built on every process, so that bad options stop them all.
    periodic_checkpointer = PeriodicCheckpointer(checkpointer, **cfg.train.checkpointer)
    trainer.register_hooks(
        [
            hooks.IterationTimer(),
            # Before the checkpointer and the evaluation, so both see this step's EMA.
            EMAHook(ema, model) if ema is not None else None,
            hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
            # On every process, right before the checkpointer: it saves what this gathers.
            GatherRandomStatesHook(random_states, periodic_checkpointer.period, cfg.train.max_iter),
            periodic_checkpointer if is_main else None,
            hooks.EvalHook(cfg.train.eval_period, evaluate),
            hooks.PeriodicWriter(
                default_writers(cfg.train.output_dir, cfg.train.max_iter),
                period=cfg.train.log_period,
            )
            if is_main
            else None,
        ]
    )

    configured = configured_hyperparameters(optimizer)
    checkpointer.resume_or_load(cfg.train.init_checkpoint, resume=args.resume)
    if args.resume and checkpointer.has_checkpoint():
        # The checkpoint stores the iteration that just finished.
        start_iter = trainer.iter + 1
        check_resume_iteration(checkpointer.get_checkpoint_file(), start_iter, cfg.train.max_iter)
        changes = restore_configured_hyperparameters(optimizer, configured)
        if changes:
            logger.warning(
                "Resuming with the config's optimizer settings, not the checkpoint's (its "
                "optimizer state is kept): %s",
                "; ".join(changes),
            )
        if data_stream is not None and not data_stream.loaded:
            logger.warning(
                "%s has no usable training data-stream position (see the warning above, or a "
                "checkpoint written before detr_ext recorded it): the train loader's stream "
                "starts from its beginning again.",
                checkpointer.get_checkpoint_file(),
            )
        if getattr(train_loader, "num_workers", None) == 0:
            # Starting the loader draws its seed from torch's generator, which the uninterrupted
            # run did at iteration 0: drawn before the generators are put back, the resumed run
            # then continues exactly (see detr_ext.engine.random_states for workers).
            trainer._data_loader_iter  # noqa: B018  (creates the iterator)
        random_states.restore(start_iter)
    else:
        if args.resume:
            # fvcore says only "No checkpoint found. Initializing model from scratch": a
            # mistyped train.output_dir silently became a new run.
            logger.warning(
                "--resume: %s holds no checkpoint to continue (no %s file); this is a new run "
                "from train.init_checkpoint=%r.",
                cfg.train.output_dir,
                LAST_CHECKPOINT_FILE,
                cfg.train.init_checkpoint,
            )
        start_iter = 0
    if timings is not None:
        timings["start_iter"] = start_iter
    trainer.train(start_iter, cfg.train.max_iter)
    return dict(last_results)
