"""The seed of a run: drawn when the config asks for a new one, recorded in the run's
``config.yaml``, and kept when the run is resumed or evaluated."""

from __future__ import annotations

import argparse
import os

from detectron2.utils import comm
from omegaconf import DictConfig

from ..config import load_config, overrides_key

__all__ = [
    "draw_seed",
    "keep_recorded_seed",
    "read_recorded_seed_before_launch",
    "recorded_seed",
    "seed_override_ignored",
]


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


def recorded_seed(config_yaml: str | os.PathLike) -> int | None:
    """``train.seed`` as a run's saved ``config.yaml`` records it; ``None`` when there is no
    such file or it records no seed >= 0. Tags of Python objects in the file are read as
    nothing (only the seed is needed, and nothing in the file is run)."""
    import yaml

    class _SeedLoader(yaml.SafeLoader):
        pass

    _SeedLoader.add_multi_constructor("", lambda loader, suffix, node: None)
    try:
        with open(config_yaml) as f:
            data = yaml.load(f, Loader=_SeedLoader)
    except (OSError, yaml.YAMLError):
        return None
    train = data.get("train") if isinstance(data, dict) else None
    seed = train.get("seed") if isinstance(train, dict) else None
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        return None
    return seed


def _continuing(args: argparse.Namespace) -> bool:
    """``--resume`` or ``--eval-only``."""
    return bool(getattr(args, "resume", False) or getattr(args, "eval_only", False))


def seed_override_ignored(args: argparse.Namespace, kept_seed: int | None) -> bool:
    """Whether a ``train.seed`` override on the command line was set aside for ``kept_seed``,
    the seed of the run being continued or evaluated (:func:`keep_recorded_seed`)."""
    return kept_seed is not None and overrides_key(getattr(args, "opts", []), "train.seed")


def read_recorded_seed_before_launch(args: argparse.Namespace) -> int | None:
    """For an entry point of a multi-process run on one machine, before ``launch``: set
    ``args.recorded_seed`` to the seed that the ``config.yaml`` of the run being resumed or
    evaluated records (``None`` when nothing is recorded or the run is a new one), and return
    it. :func:`keep_recorded_seed` then keeps it in every
    process without a collective and before process 0's ``default_setup`` rewrites the file.
    Loads ``args.config_file`` with ``args.opts`` to find ``train.output_dir``."""
    args.recorded_seed = None
    if _continuing(args):
        cfg = load_config(args.config_file, getattr(args, "opts", []))
        if "train" in cfg and "seed" in cfg.train:
            output_dir = str(cfg.train.get("output_dir", ""))
            args.recorded_seed = recorded_seed(os.path.join(output_dir, "config.yaml"))
    return args.recorded_seed


def keep_recorded_seed(cfg: DictConfig, args: argparse.Namespace) -> int | None:
    """With ``--resume`` or ``--eval-only``: set ``train.seed`` to the seed the run's
    ``config.yaml`` (in ``train.output_dir``) records. Continuing or evaluating a run then
    neither draws a seed nothing trained with (a negative ``train.seed``) nor takes the config
    file's when the run was started with another (``train.seed=-1`` on its command line), and
    ``default_setup`` does not overwrite the record of the seed it trained with. A
    ``train.seed`` override is set aside too (:func:`seed_override_ignored`): a resumed run
    continues the checkpoint's random states and data stream, so it would change nothing but
    the record. With nothing recorded, ``train.seed`` is used as for a new run.

    The seed is ``args.recorded_seed`` when the entry point read it before launching
    (:func:`read_recorded_seed_before_launch`); otherwise, in a single process, it is read here.
    Several processes would need a collective to agree on one reading of the file before process
    0 rewrites it, so without ``args.recorded_seed`` they draw a negative seed as for a new run.

    Returns:
        the recorded seed when it replaced another value of ``train.seed``, else ``None``.
    """
    if "train" not in cfg or "seed" not in cfg.train or not _continuing(args):
        return None
    if hasattr(args, "recorded_seed"):
        seed = args.recorded_seed
    elif comm.get_world_size() == 1:
        seed = recorded_seed(os.path.join(str(cfg.train.get("output_dir", "")), "config.yaml"))
    else:
        return None
    if seed is None or seed == cfg.train.seed:
        return None
    cfg.train.seed = seed
    return seed
