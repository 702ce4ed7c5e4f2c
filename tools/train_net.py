#!/usr/bin/env python
"""Train or evaluate any detr_ext project from a LazyConfig file.

    python tools/train_net.py --config-file projects/dino/configs/dino_r50_4scale_12ep.py \
        train.output_dir=./output/dino train.device=cuda
    python tools/train_net.py --config-file ... --resume               # continue a run
    python tools/train_net.py --config-file ... --eval-only train.init_checkpoint=model.pth
    python tools/train_net.py --config-file ... --num-gpus 8          # one process per GPU

``--eval-only`` needs trained weights in ``train.init_checkpoint`` (with ``--resume``: the last
checkpoint of ``train.output_dir`` is evaluated instead): an empty one is an error
unless ``--allow-random-weights`` is given (to smoke-test the evaluation itself), a missing
file is an error, and so is a checkpoint whose tensors do not fit the config's model (e.g. a
class head trained with another ``model.num_classes``). Training and evaluation both stop
early when ``model.num_classes`` is smaller than a dataset's number of categories.

Evaluation files (``coco_instances_results.json``, ...) go to ``<train.output_dir>/inference``
(``inference/ema`` for the EMA weights), following ``train.output_dir`` however it was set.
``--analyze`` adds a TIDE error breakdown and a confusion matrix there (``analysis/``).

The loops live in :mod:`detr_ext.engine`; a project changes training through its config.
"""

import sys
from pathlib import Path

# Make `detr_ext` and `projects.*` importable when run as a script from any directory.
_REPO_ROOT = Path(__file__).resolve().parents[1]
if str(_REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(_REPO_ROOT))

from detectron2.config import instantiate  # noqa: E402
from detectron2.engine import launch  # noqa: E402
from detectron2.utils import comm  # noqa: E402

from detr_ext.config import ConfigUsageError, check_overrides, load_config  # noqa: E402
from detr_ext.engine import (  # noqa: E402
    EvalCheckpointNotFoundError,
    OutputDirInUseError,
    check_new_run_output_dir,
    default_argument_parser,
    do_test,
    do_train,
    eval_checkpoint_path,
    leave_process_group,
    load_eval_checkpoint,
    read_recorded_seed_before_launch,
    setup,
)


def build_parser():
    """detectron2's ``default_argument_parser`` plus ``--allow-random-weights`` and
    ``--analyze``."""
    parser = default_argument_parser()
    parser.add_argument(
        "--allow-random-weights",
        action="store_true",
        help="with --eval-only and an empty train.init_checkpoint, evaluate the randomly "
        "initialised model instead of stopping with an error",
    )
    parser.add_argument(
        "--analyze",
        action="store_true",
        help="with the evaluation, write a TIDE error breakdown and a confusion matrix (JSON and "
        "PNG) to <train.output_dir>/inference/analysis/ (needs hotcoco)",
    )
    return parser


def main(args) -> None:
    cfg = setup(args)
    if args.eval_only:
        model = instantiate(cfg.model)
        model.to(cfg.train.device)
        ema = load_eval_checkpoint(
            cfg,
            model,
            allow_random_weights=getattr(args, "allow_random_weights", False),
            resume=args.resume,
        )
        # Not wrapped in DDP: evaluation needs no gradient sync, and DDP's forward broadcasts
        # buffers, a collective that a process with no test image (fewer test images than
        # processes) never joins, so the others waited for it until the gloo/NCCL timeout.
        results = do_test(cfg, model, eval_only=True, ema=ema)
        if comm.is_main_process():
            print(results)
    else:
        do_train(args, cfg)
    leave_process_group()


def dist_url_for(args, parser) -> str:
    """``--dist-url`` as given; on one machine without it, ``"auto"`` (a free port).
    detectron2's default is one port per user, so two multi-process runs of one user on one
    machine (two experiments, or tests next to a training) collided, and the second failed."""
    if args.num_machines == 1 and args.dist_url == parser.get_default("dist_url"):
        return "auto"
    return args.dist_url


if __name__ == "__main__":
    parser = build_parser()
    args = parser.parse_args()
    several_processes = args.num_gpus * args.num_machines > 1
    if args.overwrite and (args.resume or args.eval_only):
        given = "--resume" if args.resume else "--eval-only"
        parser.error(f"--overwrite starts a new run: expected it without {given}, got both")
    try:
        check_overrides(args.opts)  # before any process starts: one message, exit status 2
        if several_processes and not (args.resume or args.eval_only or args.overwrite):
            # One process checks in setup(); loading the config here too would run a config's
            # own dataset registration twice in that process.
            cfg = load_config(args.config_file, args.opts)
            check_new_run_output_dir(cfg.get("train", {}).get("output_dir", ""))
        if several_processes and args.eval_only:
            # The weights to evaluate, checked once here: otherwise every process raised.
            eval_checkpoint_path(
                load_config(args.config_file, args.opts),
                allow_random_weights=args.allow_random_weights,
                resume=args.resume,
            )
        if several_processes and args.num_machines == 1:
            # Read before process 0 rewrites config.yaml: a resumed or evaluated run keeps it.
            read_recorded_seed_before_launch(args)
        # Put in args too: the logged command line then says "auto", not detectron2's default
        # port, which the run does not use.
        args.dist_url = dist_url_for(args, parser)
        launch(
            main,
            args.num_gpus,
            num_machines=args.num_machines,
            machine_rank=args.machine_rank,
            dist_url=args.dist_url,
            args=(args,),
        )
    except (ConfigUsageError, OutputDirInUseError, EvalCheckpointNotFoundError) as error:
        # Those of a single process come from main(), run in this process: setup() refusing the
        # output directory, --eval-only without weights (NothingToEvaluateError is a
        # ConfigUsageError) or with a checkpoint that does not exist. Before several processes
        # start, this process checks the output directory and the weights to evaluate.
        parser.error(str(error))
