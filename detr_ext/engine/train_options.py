"""``cfg.train`` checked against the options ``tools/train_net.py`` reads.

The training loop reads ``cfg.train`` with defaults (``cfg.train.get("ema")``,
``clip_grad.get("enabled", False)``), so a misspelt key (``train.clip_grad.enable=True``) or a
key named as in another codebase (detrex's ``train.model_ema``) used to switch nothing on and
say nothing: a run "with EMA" had none. :func:`check_train_options` compares the config's
``train`` with the options documented in ``configs/common/train.py`` and raises
:class:`~detr_ext.config.ConfigUsageError` naming every unknown key, the nearest known one, and
detrex's names where they differ. The keyword-argument groups ``train.ddp`` and
``train.checkpointer`` are free (``DistributedDataParallel`` and the checkpointer check their
own arguments), as is ``train.clip_grad.params`` (checked by the trainer).
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

from ..config import ConfigUsageError, get_config

__all__ = ["check_train_options", "known_train_options"]

# Groups whose keys are another callable's keyword arguments, checked there.
FREE_GROUPS = ("ddp", "checkpointer", "clip_grad.params")

# Options of other codebases' train configs, and what to use here.
FOREIGN_OPTIONS = {
    "model_ema": "train.ema (enabled, decay, warmup, device, use_ema_weights_for_eval_only)",
    "fast_dev_run": "a short run with train.max_iter=<N>",
    "wandb": "TensorBoard or metrics.json in train.output_dir (no Weights & Biases writer)",
}


def known_train_options() -> dict[str, Any]:
    """The ``train`` options of ``configs/common/train.py`` as a nested plain dict."""
    train = get_config("common/train.py").train
    return _plain(train)


def _plain(node: Any) -> Any:
    if isinstance(node, Mapping):
        return {str(key): _plain(value) for key, value in node.items()}
    return node


def _unknown(options: Mapping, known: Mapping, prefix: str) -> list[str]:
    problems = []
    for key, value in options.items():
        dotted = f"{prefix}.{key}"
        if key not in known:
            problems.append(_describe(dotted, str(key), known, prefix))
        elif (
            isinstance(known[key], Mapping)
            and isinstance(value, Mapping)
            and dotted.removeprefix("train.") not in FREE_GROUPS
        ):
            problems += _unknown(value, known[key], dotted)
    return problems


def _describe(dotted: str, key: str, known: Mapping, prefix: str) -> str:
    if prefix == "train" and key in FOREIGN_OPTIONS:
        return f"{dotted} (detrex's name; here: {FOREIGN_OPTIONS[key]})"
    close = difflib.get_close_matches(key, [str(k) for k in known], n=1, cutoff=0.6)
    if close:
        return f"{dotted} (did you mean {prefix}.{close[0]}?)"
    return f"{dotted} (known under {prefix}: {', '.join(sorted(str(k) for k in known))})"


def check_train_options(train: Mapping, known: Mapping | None = None) -> None:
    """Raise :class:`~detr_ext.config.ConfigUsageError` if ``train`` (a config's ``train``)
    has a key that ``tools/train_net.py`` does not read (see the module docstring).

    Args:
        train: the config's ``train`` node.
        known: the known options (default :func:`known_train_options`).
    """
    if known is None:
        known = known_train_options()
    problems = _unknown(train, known, "train")
    if problems:
        raise ConfigUsageError(
            "unknown training options, which would be ignored: "
            + "; ".join(problems)
            + ". Expected the options of configs/common/train.py."
        )
