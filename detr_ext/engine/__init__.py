"""Training and evaluation: :class:`Trainer` (AMP / bf16, gradient clipping), weight EMA, and
the config-driven loops used by ``tools/train_net.py``."""

from .defaults import (
    build_ema,
    default_argument_parser,
    do_test,
    do_train,
    load_eval_checkpoint,
    setup,
    share_cpu_threads,
    wrap_ddp,
)
from .ema import EMAHook, ModelEMA, apply_ema, unwrap_model
from .trainer import Trainer

__all__ = [
    "EMAHook",
    "ModelEMA",
    "Trainer",
    "apply_ema",
    "build_ema",
    "default_argument_parser",
    "do_test",
    "do_train",
    "load_eval_checkpoint",
    "setup",
    "share_cpu_threads",
    "unwrap_model",
    "wrap_ddp",
]
