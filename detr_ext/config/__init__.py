"""Config helpers: :func:`get_config` loads the shared LazyConfig files under ``configs/``."""

from .config import accepts_argument, configs_dir, get_config

__all__ = ["accepts_argument", "configs_dir", "get_config"]
