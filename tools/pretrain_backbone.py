#!/usr/bin/env python
"""Pretrain a detector's backbone without labels by DINO self-distillation.

The backbone is ``cfg.model.backbone`` of a detector LazyConfig; its images come from a folder
(``--images``) or from registered detectron2 datasets (``--datasets``, default: the config's
training datasets; labels are ignored). A k-NN probe on the object crops of ``--probe-dataset``
(labels used only there) measures the features before, during and after training::

    python tools/pretrain_backbone.py --config-file projects/dino/configs/dino_shapes.py \\
        --output-dir output/pretrain_dino_shapes --max-iter 300 --batch-size 16
    python tools/train_net.py --config-file projects/dino/configs/dino_shapes.py \\
        train.init_checkpoint=output/pretrain_dino_shapes/backbone.pth

Writes to ``--output-dir``: ``model_final.pth`` (student, teacher, loss center, optimizer,
iteration; ``--resume`` continues from ``last_checkpoint``), ``backbone.pth`` (the teacher's
backbone as ``{"model": {"backbone.*": tensor}}``), ``probe.json`` (``[{"iteration",
"accuracy"}]``, iteration 0 = before training) and ``metrics.json``.

Pretraining options are given as ``key=value`` after the flags; their defaults and meaning are
in :class:`detr_ext.pretrain.options.PretrainOptions`: max_iter, batch_size, lr, min_lr,
warmup_fraction, weight_decay, weight_decay_end, teacher_momentum, teacher_momentum_end,
clip_grad, freeze_last_layer_iters, student_temp, teacher_temp, warmup_teacher_temp,
warmup_teacher_temp_fraction, center_momentum, out_dim, hidden_dim, bottleneck_dim, head_bn,
in_feature, global_size, local_size, num_local, num_workers, checkpoint_period, log_period,
probe_period, probe_crop_size, knn_k, knn_temperature, seed. ``--max-iter``, ``--batch-size`` and
``--probe-period`` set the options of the same name. All are checked before anything is built.
A ``key=value`` whose key has a dot is a config override instead, e.g.
``model.backbone.norm=BN model.backbone.freeze_at=0``: the backbone to pretrain must be fully
trainable (no frozen stages, no ``FrozenBatchNorm2d``), and the error says which overrides make
it so.

Every checkpoint records the options and the random generators' states; ``--resume`` refuses
other model options (out_dim, hidden_dim, bottleneck_dim, head_bn, in_feature) and a
``max_iter`` below the checkpoint's iteration, warns about other changed training options, and
continues the crops where the checkpoint left them (see :mod:`detr_ext.pretrain.resume`).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

# Make `detr_ext` and `projects.*` importable when run as a script from any directory.
_REPO_ROOT = Path(__file__).resolve().parents[1]
if str(_REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(_REPO_ROOT))

import torch  # noqa: E402
from detectron2.config import LazyConfig, instantiate  # noqa: E402
from detectron2.utils.env import seed_all_rng  # noqa: E402
from detectron2.utils.logger import setup_logger  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from detr_ext.engine import DataStreamState, draw_seed  # noqa: E402
from detr_ext.engine.checkpointer import SafeCheckpointer  # noqa: E402
from detr_ext.engine.checks import config_dataset_names  # noqa: E402
from detr_ext.engine.output_dir import (  # noqa: E402
    OutputDirInUseError,
    check_new_run_output_dir,
    set_aside_earlier_run,
)
from detr_ext.pretrain import MultiCropAugmentation  # noqa: E402
from detr_ext.pretrain.checks import check_trainable_backbone, probe_dataset_name  # noqa: E402
from detr_ext.pretrain.data import (  # noqa: E402
    PretrainImageDataset,
    build_pretrain_loader,
    dataset_image_files,
    folder_image_files,
)
from detr_ext.pretrain.export import (  # noqa: E402
    backbone_load_report,
    save_backbone_checkpoint,
)
from detr_ext.pretrain.knn import (  # noqa: E402
    IMAGENET_PIXEL_MEAN,
    IMAGENET_PIXEL_STD,
    KNNProbe,
)
from detr_ext.pretrain.options import PretrainOptions, apply_option_overrides  # noqa: E402
from detr_ext.pretrain.resume import PretrainRunState, check_resume_end  # noqa: E402
from detr_ext.pretrain.trainer import (  # noqa: E402
    DINOPretrainer,
    build_pretrain_hooks,
    build_pretrain_model,
    load_probe_history,
    param_groups,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config-file", required=True, help="a detector LazyConfig .py file")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--images", help="a folder of images (searched recursively)")
    source.add_argument(
        "--datasets", nargs="+", help="registered datasets (default: the config's train sets)"
    )
    parser.add_argument("--output-dir", default="./output/pretrain_backbone")
    parser.add_argument("--max-iter", type=int, help="iterations (option max_iter)")
    parser.add_argument("--batch-size", type=int, help="images per step (option batch_size)")
    parser.add_argument("--resume", action="store_true", help="continue from last_checkpoint")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="start a new pretraining in --output-dir even though it holds an earlier one (its "
        "files are moved into replaced_<time>/ there); without it, such a run is refused",
    )
    parser.add_argument(
        "--probe-dataset",
        default=None,
        help="registered dataset whose object crops the k-NN probe classifies ('' for none; "
        "default: shapes_val if the config registers it, else none)",
    )
    parser.add_argument("--probe-period", type=int, help="iterations between probes")
    parser.add_argument("--num-threads", type=int, help="torch intra-op threads")
    parser.add_argument("--device", default="cpu", help="e.g. cpu or cuda")
    parser.add_argument(
        "opts",
        nargs="*",
        default=[],
        help="key=value pretraining options; a dotted key (model.backbone.norm=BN) overrides "
        "the config",
    )
    return parser


def _options(args: argparse.Namespace) -> tuple[PretrainOptions, list[str]]:
    """The validated pretraining options, and the config overrides (dotted keys) of
    ``args.opts``."""
    config_overrides = [item for item in args.opts if "." in item.partition("=")[0]]
    option_items = [item for item in args.opts if item not in config_overrides]
    options = apply_option_overrides(PretrainOptions(), option_items)
    flags = {"max_iter": args.max_iter, "batch_size": args.batch_size}
    flags["probe_period"] = args.probe_period
    flags = [f"{k}={v}" for k, v in flags.items() if v is not None]
    return apply_option_overrides(options, flags).validate(), config_overrides


def _image_files(args: argparse.Namespace, cfg) -> list[str]:
    if args.images:
        return folder_image_files(args.images)
    names = args.datasets or config_dataset_names(cfg, splits=("train",))
    if not names:
        raise ValueError(
            f"{args.config_file}: no dataloader.train.dataset.names; give --images or --datasets"
        )
    return dataset_image_files(names)


def main(args: argparse.Namespace) -> dict:
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    options, config_overrides = _options(args)
    requested_seed = options.seed
    # As train.seed in tools/train_net.py: negative draws a seed, logged and checkpointed.
    options.seed = draw_seed(OmegaConf.create({"train": {"seed": requested_seed}}))
    set_aside = None
    if not args.resume and check_new_run_output_dir(args.output_dir, overwrite=args.overwrite):
        set_aside = set_aside_earlier_run(args.output_dir, extra=("backbone.pth", "probe.json"))
    os.makedirs(args.output_dir, exist_ok=True)
    setup_logger(args.output_dir, name="detectron2")
    logger = setup_logger(args.output_dir, name="detr_ext", abbrev_name="detr")
    if set_aside is not None:
        logger.warning(
            "--overwrite: the earlier pretraining in %s is now in %s", args.output_dir, set_aside
        )
    if options.seed != requested_seed:
        logger.info(
            "seed=%d: drew seed %d (seed=%d repeats the run)", requested_seed, *[options.seed] * 2
        )
    logger.info("Pretraining options: %s", options)
    seed_all_rng(options.seed)

    cfg = LazyConfig.apply_overrides(LazyConfig.load(args.config_file), config_overrides)
    backbone = instantiate(cfg.model.backbone)
    check_trainable_backbone(backbone, cfg.model.backbone)
    probe_dataset = probe_dataset_name(args.probe_dataset)
    pixel_mean = list(OmegaConf.select(cfg, "model.pixel_mean", default=IMAGENET_PIXEL_MEAN))
    pixel_std = list(OmegaConf.select(cfg, "model.pixel_std", default=IMAGENET_PIXEL_STD))
    image_format = OmegaConf.select(cfg, "model.input_format", default="RGB")

    files = _image_files(args, cfg)
    logger.info("Pretraining on %d images", len(files))
    crops = MultiCropAugmentation(
        global_size=options.global_size,
        local_size=options.local_size,
        num_local=options.num_local,
        pixel_mean=pixel_mean,
        pixel_std=pixel_std,
    )
    dataset = PretrainImageDataset(files, crops, image_format=image_format)
    # The loader's own generator seeds its workers; it is checkpointed with the others.
    loader_generator = torch.Generator().manual_seed(options.seed)
    loader = build_pretrain_loader(
        dataset, options.batch_size, options.num_workers, options.seed, loader_generator
    )

    model, loss = build_pretrain_model(backbone, options)
    model.to(args.device)
    loss.to(args.device)
    model.train()
    optimizer = torch.optim.AdamW(param_groups(model.student), lr=options.lr)
    trainer = DINOPretrainer(model, loss, loader, optimizer, options)
    # Checkpoints record the loader's place in its image stream; --resume continues it.
    data_stream = DataStreamState(loader.sampler, options.batch_size, trainer)
    run_state = PretrainRunState(options, loader_generator, options.seed != requested_seed)
    checkpointer = SafeCheckpointer(
        model,
        args.output_dir,
        pretrain_run=run_state,  # loaded before the model: its option check comes first
        optimizer=optimizer,
        dino_loss=loss,
        data_stream=data_stream,
        checked_keys=("model",),
    )
    start = checkpointer.resume_or_load("", resume=args.resume)
    start_iter = start.get("iteration", -1) + 1 if args.resume else 0
    if args.resume and "iteration" not in start:
        logger.info("--resume: no checkpoint in %s, starting from scratch", args.output_dir)
    elif args.resume:
        check_resume_end(checkpointer.get_checkpoint_file(), start_iter, options.max_iter)
        if run_state.saved_options is None:
            logger.warning("--resume: the checkpoint records no options; they are not checked")
        if not data_stream.loaded:
            logger.warning(
                "--resume: the checkpoint has no usable image-stream position; the loader's "
                "stream starts from its beginning again."
            )

    probe = None
    if probe_dataset:
        probe = KNNProbe.from_dataset(
            probe_dataset,
            size=options.probe_crop_size,
            pixel_mean=pixel_mean,
            pixel_std=pixel_std,
            image_format=image_format,
            k=options.knn_k,
            temperature=options.knn_temperature,
        )
    history = load_probe_history(args.output_dir) if args.resume else []
    history[:] = [entry for entry in history if entry["iteration"] <= start_iter]
    trainer.register_hooks(
        build_pretrain_hooks(trainer, checkpointer, args.output_dir, probe, history)
    )
    if start_iter > 0:
        run_state.restore_rng(start_iter)  # last, so that nothing draws between it and the crops
    trainer.train(start_iter, options.max_iter)

    backbone_file = os.path.join(args.output_dir, "backbone.pth")
    checkpoint = save_backbone_checkpoint(model, backbone_file)
    logger.info("Saved the teacher's backbone to %s", backbone_file)
    report = backbone_load_report(instantiate(cfg.model), checkpoint)
    print(f"{backbone_file} into {args.config_file}'s model: {report.summary()}", flush=True)
    if probe is not None:
        for entry in history:
            print(f"k-NN probe: iteration {entry['iteration']}: {entry['accuracy']:.4f}")
    return {"backbone": backbone_file, "probe": history, "report": report}


if __name__ == "__main__":
    _parser = build_parser()
    try:
        main(_parser.parse_args())
    except OutputDirInUseError as error:
        _parser.error(str(error))
