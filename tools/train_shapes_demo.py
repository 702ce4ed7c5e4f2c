#!/usr/bin/env python
"""Train a detector on the bundled shapes data, evaluate it, and draw its predictions
(``make train``).

    python tools/train_shapes_demo.py                  # DINO, into output/dino_shapes
    python tools/train_shapes_demo.py --resume         # continue that run
    python tools/train_shapes_demo.py --skip-train     # evaluate + draw its model_final.pth
    python tools/train_shapes_demo.py --config-file projects/detr/configs/detr_shapes.py \
        --output-dir output/detr_shapes train.max_iter=500    # any config, key=value overrides

Steps: train with ``detr_ext.engine.do_train`` (progress lines with ETA from detectron2's
``CommonMetricPrinter``; it evaluates the final weights with the config's evaluator,
``COCOEvaluator``, through ``do_test``; with ``--skip-train`` this script evaluates
``<output>/model_final.pth`` the same way), print the AP table and a summary line, save a grid of
predictions on the first test images to ``<output>/predictions.png`` and the figures to
``<output>/summary.json``. This script is the command line, the seed handling and the order of
the steps; the grid is drawn by ``detr_ext.engine.prediction_grid``, the summary's figures by
``detr_ext.engine.run_summary`` and ``detr_ext.utils.json_ready``. A new run replaces an earlier
run in the same output directory, moving its files into ``replaced_<time>/`` there, and prints
a note saying so (``--resume`` continues it).

The seed: a new run takes the config's ``train.seed`` (a negative one is replaced by a new
seed each run), prints it and records it in ``<output>/config.yaml``. ``--resume`` and
``--skip-train`` keep the seed that ``config.yaml`` records for the run they continue or
evaluate; a ``train.seed=N`` override is ignored then (the script says so), and used only
when nothing is recorded. ``key=value``
overrides may come before, between or after the options.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

# Make `detr_ext` and `projects.*` importable when run as a script from any directory.
_REPO_ROOT = Path(__file__).resolve().parents[1]
if str(_REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(_REPO_ROOT))

DEFAULT_CONFIG = "projects/dino/configs/dino_shapes.py"
DEFAULT_OUTPUT_DIR = "output/dino_shapes"
# Iterations between progress lines: a DINO / DETR shapes step takes ~1 s on 2 free CPU cores
# and up to ~6 s on a busy machine, so this gives a line (with ETA) at least every ~30 s.
PROGRESS_LOG_PERIOD = 5


class UsageError(Exception):
    """A problem with the command line or a missing file, reported without a traceback."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Train on the shapes data, evaluate (COCO AP) and save a predictions grid."
    )
    parser.add_argument(
        "--config-file",
        default=DEFAULT_CONFIG,
        help=f"LazyConfig file (default: {DEFAULT_CONFIG}, relative to the repository root "
        "when not found from the current directory)",
    )
    parser.add_argument(
        "--output-dir",
        default=DEFAULT_OUTPUT_DIR,
        help=f"checkpoints, logs, metrics, predictions.png, summary.json (default: "
        f"{DEFAULT_OUTPUT_DIR})",
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue from the last checkpoint in --output-dir"
    )
    parser.add_argument(
        "--skip-train",
        action="store_true",
        help="do not train: evaluate and draw <output-dir>/model_final.pth",
    )
    parser.add_argument(
        "--num-images", type=int, default=6, help="test images in the grid (default: 6)"
    )
    parser.add_argument(
        "--confidence-threshold",
        type=float,
        default=0.3,
        help="minimum score of a drawn detection (default: 0.3; sigmoid focal-loss scores of "
        "a model this short-trained are rarely above 0.6)",
    )
    parser.add_argument(
        "--num-processes",
        type=int,
        default=None,
        help="training processes (DDP through detectron2's launch; gloo on a CPU, where the "
        "cores are split between them); default 1 (on 2 CPU cores, 2 processes were ~6%% "
        "slower per step for dino_shapes)",
    )
    parser.add_argument(
        "--analyze",
        action="store_true",
        help="with the evaluation, write a TIDE error breakdown and a confusion matrix (JSON and "
        "PNG) to <train.output_dir>/inference/analysis/ (needs hotcoco)",
    )
    parser.add_argument("opts", nargs="*", default=[], help="config overrides, key=value")
    return parser


def _resolve_config_file(config_file: str) -> str:
    if os.path.isfile(config_file):
        return config_file
    in_repo = _REPO_ROOT / config_file
    if not os.path.isabs(config_file) and in_repo.is_file():
        return str(in_repo)
    raise UsageError(f"--config-file: expected a LazyConfig .py file, got {config_file!r}")


def _overridden(opts: Sequence[str], key: str) -> bool:
    from detr_ext.config import overrides_key

    return overrides_key(opts, key)


def parse_arguments(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line, with ``key=value`` overrides allowed on both sides of the options
    (``train.seed=0 --output-dir X train.max_iter=10``)."""
    return build_parser().parse_intermixed_args(argv)


def _run_output_dir(args: argparse.Namespace) -> Path:
    """The run's ``train.output_dir``: ``--output-dir`` unless an override sets it (read as
    detectron2 reads overrides)."""
    from detectron2.config import LazyConfig
    from omegaconf import OmegaConf

    overrides = [opt for opt in args.opts if _overridden([opt], "train.output_dir")]
    node = OmegaConf.create({"train": {"output_dir": args.output_dir}})
    return Path(str(LazyConfig.apply_overrides(node, overrides).train.output_dir))


def continued_run_seed(args: argparse.Namespace) -> int | None:
    """With ``--resume`` or ``--skip-train``: the seed of the run being continued or evaluated,
    as its ``config.yaml`` records it, to be kept (``None`` when nothing is recorded); a
    ``train.seed`` override is set aside for it, as ``train_net`` does. Says which seed the run
    takes and why. Called once, before any process writes a new ``config.yaml``."""
    from detr_ext.engine import recorded_seed

    if not (args.resume or args.skip_train):
        return None
    config_yaml = _run_output_dir(args) / "config.yaml"
    seed = recorded_seed(config_yaml)
    what = "continued" if args.resume else "evaluated"
    if seed is None:
        print(f"note: {config_yaml} records no train.seed for the run being {what}")
        return None
    given = [opt for opt in args.opts if _overridden([opt], "train.seed")]
    if given:
        print(
            f"note: ignoring {given[-1]} from the command line: the run being {what} was "
            f"trained with the seed {seed} that {config_yaml} records (a resumed run continues "
            "the checkpoint's random states)"
        )
    print(f"note: keeping the seed {seed} that {config_yaml} records for the run being {what}")
    return seed


def replace_earlier_run(args: argparse.Namespace) -> bool:
    """A new run of the demo replaces an earlier one in its output directory (``train_net``
    refuses that without ``--overwrite``): says so when there is one. Returns ``True`` (the
    value of ``args.overwrite`` for :func:`detr_ext.engine.setup`)."""
    from detr_ext.engine.output_dir import last_checkpoint_name

    output_dir = _run_output_dir(args)
    last = None if args.resume or args.skip_train else last_checkpoint_name(output_dir)
    if last is not None:
        print(
            f"note: {output_dir} holds an earlier run (last checkpoint {last}); this new run "
            "replaces it, moving its files into replaced_<time>/ there (--resume continues it, "
            "--output-dir DIR keeps it in place)"
        )
    return True


def setup(args: argparse.Namespace):
    """:func:`detr_ext.engine.setup` with, unless the overrides set them, ``--output-dir`` as
    ``train.output_dir`` (evaluation files then go to its ``inference/``) and a
    ``train.log_period`` of at most ``PROGRESS_LOG_PERIOD``."""
    from detr_ext.config import ConfigUsageError, check_overrides
    from detr_ext.engine import setup as engine_setup

    try:
        check_overrides(args.opts)
    except ConfigUsageError as error:
        raise UsageError(str(error)) from error

    def edit(cfg) -> None:
        if not _overridden(args.opts, "train.output_dir"):
            cfg.train.output_dir = args.output_dir
        if not _overridden(args.opts, "train.log_period"):
            cfg.train.log_period = min(int(cfg.train.log_period), PROGRESS_LOG_PERIOD)

    return engine_setup(args, edit)


def evaluate(cfg, weights: str) -> dict:
    """COCO evaluation of ``weights`` (and its EMA weights, when the config keeps them) through
    ``detr_ext.engine.do_test``; logs the AP tables and detectron2's ``print_csv_format``."""
    from detectron2.config import instantiate

    from detr_ext.engine import do_test, load_eval_checkpoint

    model = instantiate(cfg.model)
    model.to(cfg.train.device)
    cfg.train.init_checkpoint = weights
    ema = load_eval_checkpoint(cfg, model)
    return do_test(cfg, model, eval_only=True, ema=ema)


def resolve_num_processes(args: argparse.Namespace) -> int:
    """``--num-processes`` (default 1; always 1 with ``--skip-train``). Before several
    processes are launched, the config's datasets are loaded once here (generating the bundled
    shapes images if needed) so that the processes do not race to write them."""
    if args.num_processes is not None and args.num_processes < 1:
        raise UsageError(f"--num-processes: expected a positive number, got {args.num_processes}")
    if args.skip_train or args.num_processes is None or args.num_processes == 1:
        return 1
    from detectron2.data import DatasetCatalog

    from detr_ext.config import ConfigUsageError, load_config
    from detr_ext.engine.checks import config_dataset_names

    try:
        cfg = load_config(args.config_file, args.opts)
    except ConfigUsageError as error:
        raise UsageError(str(error)) from error
    for name in config_dataset_names(cfg, splits=("train", "test")):
        DatasetCatalog.get(name)
    return args.num_processes


def run(args: argparse.Namespace, start_time: float) -> dict | None:
    """Train (in every process), then on the main process evaluate if training did not, draw,
    and write the summary; returns it there (``None`` on the other processes)."""
    from detectron2.utils import comm

    from detr_ext.engine.prediction_grid import save_prediction_grid
    from detr_ext.engine.run_summary import checkpoint_iteration, summary_line
    from detr_ext.utils.json_ready import json_ready

    cfg = setup(args)
    output_dir = Path(cfg.train.output_dir)
    weights = str(output_dir / "model_final.pth")

    train_seconds = None
    timings: dict[str, float] = {}
    results: dict = {}
    if args.skip_train:
        if not os.path.isfile(weights):
            raise UsageError(
                f"--skip-train: expected a trained model at {weights}, it does not exist "
                "(run without --skip-train first)"
            )
    else:
        from detr_ext.engine import do_train

        train_start = time.perf_counter()
        # do_train evaluates the final weights itself (its EvalHook runs after the last step).
        results = do_train(args, cfg, timings=timings)
        train_seconds = time.perf_counter() - train_start
    if not comm.is_main_process():
        return None
    iterations = checkpoint_iteration(weights)
    eval_seconds = timings.get("eval_seconds")
    eval_seconds = None if eval_seconds is None else round(eval_seconds, 1)
    if not results:
        eval_start = time.perf_counter()
        results = evaluate(cfg, weights)
        eval_seconds = round(time.perf_counter() - eval_start, 1)
    grid_path = output_dir / "predictions.png"
    grid_files = save_prediction_grid(
        cfg,
        weights,
        grid_path,
        args.num_images,
        threshold=args.confidence_threshold,
        title=f"{Path(args.config_file).stem}, {iterations} iterations",
    )

    box_results = dict(results.get("bbox", {}))
    box_ap = box_results.get("AP")
    summary = json_ready(
        {
            "config_file": args.config_file,
            "output_dir": str(output_dir),
            "weights": weights,
            "device": str(cfg.train.device),
            "iterations": iterations,
            "trained": not args.skip_train,
            # The iteration this run's training started at (0; with --resume after the
            # checkpoint's): train_seconds covers iterations start_iter .. iterations - 1.
            "start_iter": int(timings.get("start_iter", 0)),
            "train_seconds": None if train_seconds is None else round(train_seconds, 1),
            # The final evaluation's time (part of train_seconds when it ran in training).
            "eval_seconds": eval_seconds,
            "wall_seconds": round(time.time() - start_time, 1),
            "num_processes": comm.get_world_size(),
            # The seed this run trained with (drawn at setup when the config's is negative);
            # with --resume / --skip-train the continued or evaluated run's (continued_run_seed).
            "seed": _summary_seed(args, cfg),
            "box_AP": box_ap,
            "box_AP50": box_results.get("AP50"),
            "box_AP75": box_results.get("AP75"),
            "results": results,
            "predictions_png": str(grid_path),
            "predictions_images": grid_files,
        }
    )
    with open(output_dir / "summary.json", "w") as f:
        json.dump(summary, f, indent=2)

    print(
        summary_line(
            box_ap, iterations, train_seconds, summary["wall_seconds"], summary["start_iter"]
        )
    )
    if summary["seed"] is not None and args.skip_train:
        print(f"seed: {summary['seed']} (the evaluated model's, as recorded in config.yaml)")
    elif summary["seed"] is not None:
        print(f"seed: {summary['seed']} (add train.seed={summary['seed']} to repeat this run)")
    print(f"predictions: {grid_path}")
    print(f"summary: {output_dir / 'summary.json'}")
    return summary


def _summary_seed(args: argparse.Namespace, cfg) -> int | None:
    """The seed for ``summary.json``: the one the run trained with; with ``--skip-train`` the
    evaluated model's as its ``config.yaml`` records it (``None`` when it records none: a seed
    drawn or given for the evaluation alone trained nothing)."""
    if args.skip_train and args.recorded_seed is None:
        return None
    seed = cfg.train.get("seed")
    return None if seed is None else int(seed)


def main(argv: Sequence[str] | None = None) -> dict | None:
    """Train, evaluate and draw; returns the summary written to ``summary.json`` (``None``
    when training ran in several processes: read ``summary.json`` then)."""
    start_time = time.time()  # wall clock: comparable across the launched processes
    args = parse_arguments(argv)
    if args.resume and args.skip_train:
        raise UsageError("--resume and --skip-train: expected at most one of them, got both")
    if args.num_images < 1:
        raise UsageError(f"--num-images: expected a positive number, got {args.num_images}")
    args.config_file = _resolve_config_file(args.config_file)
    args.eval_only = args.skip_train  # read by detectron2's default_setup
    args.recorded_seed = continued_run_seed(args)
    args.overwrite = replace_earlier_run(args)

    num_processes = resolve_num_processes(args)
    if num_processes == 1:
        return run(args, start_time)
    from detectron2.engine import launch

    args.num_gpus = num_processes  # for detectron2's logged command line
    launch(run_process, num_processes, dist_url="auto", args=(args, start_time))
    return None


def run_process(args: argparse.Namespace, start_time: float) -> None:
    """:func:`run` in one of several launched processes, leaving the process group after it."""
    from detr_ext.engine import leave_process_group

    run(args, start_time)
    leave_process_group()


if __name__ == "__main__":
    try:
        main()
    except UsageError as error:
        sys.exit(f"tools/train_shapes_demo.py: error: {error}")
