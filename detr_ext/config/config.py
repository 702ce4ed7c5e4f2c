"""Load the shared LazyConfig files under the repository's ``configs/`` directory."""

from __future__ import annotations

import os
from pathlib import Path

from detectron2.config import LazyConfig
from omegaconf import DictConfig

__all__ = ["configs_dir", "get_config"]

CONFIGS_ENV_VAR = "DETR_EXT_CONFIGS"


def configs_dir() -> Path:
    """The directory that :func:`get_config` resolves paths against.

    ``$DETR_EXT_CONFIGS`` when set, otherwise ``configs/`` next to the ``detr_ext`` package
    (the repository root in a source checkout or an editable install).
    """
    override = os.environ.get(CONFIGS_ENV_VAR)
    if override:
        return Path(override).expanduser()
    import detr_ext

    return Path(detr_ext.__file__).resolve().parents[1] / "configs"


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
