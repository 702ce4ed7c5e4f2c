"""Load the shared LazyConfig files (``configs/common/...``) by a path relative to them.

They live in the repository's ``configs/`` directory; ``setup.py`` copies that directory into
built packages as ``detr_ext/config/configs/`` (as detectron2 ships ``model_zoo/configs``), so
an installed, non-editable ``detr_ext`` finds them without the repository.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from detectron2.config import LazyConfig
from detectron2.utils.registry import locate
from omegaconf import DictConfig

__all__ = [
    "ConfigUsageError",
    "accepts_argument",
    "check_overrides",
    "configs_dir",
    "get_config",
    "load_config",
]

CONFIGS_ENV_VAR = "DETR_EXT_CONFIGS"
# Where setup.py puts the copy of configs/ in a built package: next to this file.
_PACKAGED_CONFIGS = Path(__file__).resolve().parent / "configs"
# The repository's configs/ in a source checkout or an editable install.
_CHECKOUT_CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def configs_dir() -> Path:
    """The directory that :func:`get_config` resolves paths against.

    In order: ``$DETR_EXT_CONFIGS`` when set; the copy shipped inside an installed package
    (``detr_ext/config/configs``); otherwise ``configs/`` next to the ``detr_ext`` package (the
    repository root in a source checkout or an editable install). The packaged copy comes
    first so that an installed ``detr_ext`` never picks up an unrelated ``configs/`` that
    happens to sit beside it in ``site-packages``.
    """
    override = os.environ.get(CONFIGS_ENV_VAR)
    if override:
        return Path(override).expanduser()
    if _PACKAGED_CONFIGS.is_dir():
        return _PACKAGED_CONFIGS
    return _CHECKOUT_CONFIGS


def get_config(config_path: str) -> DictConfig:
    """Load a config file given relative to the configs directory.

    Example: ``get_config("common/train.py").train``.

    Args:
        config_path: path relative to :func:`configs_dir` (an absolute path is used as is).

    Returns:
        the loaded LazyConfig (an omegaconf ``DictConfig``).

    Raises:
        FileNotFoundError: if no file exists at the resolved path.
    """
    root = configs_dir()
    path = root / config_path
    if not path.is_file():
        raise FileNotFoundError(
            f"get_config: no config file '{config_path}'; looked for {path} "
            f"(configs directory {root}; set ${CONFIGS_ENV_VAR} to use another)"
        )
    return LazyConfig.load(str(path))


class ConfigUsageError(ValueError):
    """A command line's config file or ``key=value`` overrides are not usable; the message
    names what was expected and what was given, for a tool to print without a traceback."""


def check_overrides(overrides: Sequence[str]) -> list[str]:
    """``overrides`` as a list, after checking each is ``key=value``.

    Raises:
        ConfigUsageError: naming the ones that are not.
    """
    options = [opt for opt in overrides if opt.startswith("-")]
    if options:
        raise ConfigUsageError(
            f"expected config overrides as key=value, got the option(s) {options} among them: "
            "detectron2's parser takes everything after the first key=value as overrides, so "
            "options go before them (e.g. --resume train.max_iter=10, not "
            "train.max_iter=10 --resume)"
        )
    malformed = [opt for opt in overrides if "=" not in opt]
    if malformed:
        raise ConfigUsageError(f"expected config overrides as key=value, got {malformed}")
    return list(overrides)


def overrides_key(overrides: Sequence[str], key: str) -> bool:
    """Whether one of the ``key=value`` ``overrides`` sets ``key`` (e.g. ``"train.seed"``), the
    key read as detectron2's ``LazyConfig.apply_overrides`` reads it."""
    return any(opt.split("=", 1)[0] == key for opt in overrides)


def load_config(config_file: str | os.PathLike, overrides: Sequence[str] = ()) -> DictConfig:
    """A tool's ``--config-file`` loaded with its ``key=value`` overrides applied.

    Raises:
        ConfigUsageError: no such file, or an override without ``=``.
    """
    if not Path(config_file).is_file():
        raise ConfigUsageError(
            f"--config-file: expected a LazyConfig .py file, got {str(config_file)!r}"
        )
    overrides = check_overrides(overrides)
    return LazyConfig.apply_overrides(LazyConfig.load(str(config_file)), overrides)


def accepts_argument(target: Any, argument: str) -> bool:
    """Whether the callable ``target`` (or the dotted name of one, as a LazyConfig's
    ``_target_`` may hold) has a parameter named ``argument``; ``False`` for callables without
    a signature (builtins, C functions)."""
    if isinstance(target, str):
        target = locate(target)
    try:
        parameters = inspect.signature(target).parameters
    except (TypeError, ValueError):
        return False
    return argument in parameters
