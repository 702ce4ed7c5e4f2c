"""Config helpers: :func:`get_config` loads the shared LazyConfig files under ``configs/``."""

from .config import configs_dir, get_config

__all__ = ["configs_dir", "get_config"]
