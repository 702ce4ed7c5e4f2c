"""Training and evaluation: :class:`Trainer` (AMP / bf16, gradient clipping, non-finite steps
skipped), weight EMA, :class:`SafeCheckpointer` (finite weights only, atomic files), and the
config-driven loops used by ``tools/train_net.py``."""

from .checkpointer import NonFiniteCheckpointError, PeriodicCheckpointer, SafeCheckpointer
from .data_stream import DataStreamState, build_train_loader
from .defaults import (
    default_argument_parser,
    do_train,
    leave_process_group,
    setup,
    share_cpu_threads,
    wrap_ddp,
)
from .ema import EMAHook, ModelEMA, apply_ema, unwrap_model
from .evaluation import (
    EvalCheckpointNotFoundError,
    NothingToEvaluateError,
    build_ema,
    build_evaluator,
    do_test,
    eval_checkpoint_path,
    evaluation_output_dir,
    load_eval_checkpoint,
    request_error_analysis,
)
from .output_dir import OutputDirInUseError, check_new_run_output_dir
from .resume import ResumeError
from .seeds import (
    draw_seed,
    keep_recorded_seed,
    read_recorded_seed_before_launch,
    recorded_seed,
)
from .trainer import NonFiniteTrainingError, Trainer

__all__ = [
    "DataStreamState",
    "EMAHook",
    "EvalCheckpointNotFoundError",
    "ModelEMA",
    "NonFiniteCheckpointError",
    "NonFiniteTrainingError",
    "NothingToEvaluateError",
    "PeriodicCheckpointer",
    "OutputDirInUseError",
    "ResumeError",
    "SafeCheckpointer",
    "Trainer",
    "apply_ema",
    "build_ema",
    "build_evaluator",
    "build_train_loader",
    "check_new_run_output_dir",
    "default_argument_parser",
    "do_test",
    "do_train",
    "draw_seed",
    "keep_recorded_seed",
    "leave_process_group",
    "evaluation_output_dir",
    "eval_checkpoint_path",
    "load_eval_checkpoint",
    "read_recorded_seed_before_launch",
    "recorded_seed",
    "request_error_analysis",
    "setup",
    "share_cpu_threads",
    "unwrap_model",
    "wrap_ddp",
]
