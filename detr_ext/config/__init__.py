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
from .schedules import default_coco_scheduler, default_X_scheduler

__all__ = [
    "ConfigUsageError",
    "accepts_argument",
    "check_overrides",
    "configs_dir",
    "default_X_scheduler",
    "default_coco_scheduler",
    "get_config",
    "load_config",
    "overrides_key",
]
