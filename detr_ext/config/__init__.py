"""Config helpers: :func:`get_config` loads the shared LazyConfig files under ``configs/``."""

from .config import (
    ConfigUsageError,
    accepts_argument,
    check_overrides,
    configs_dir,
    get_config,
    load_config,
    overrides_key,
)

__all__ = [
    "ConfigUsageError",
    "accepts_argument",
    "check_overrides",
    "configs_dir",
    "get_config",
    "load_config",
    "overrides_key",
]
