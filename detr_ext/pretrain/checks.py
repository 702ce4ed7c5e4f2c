"""Checks that ``tools/pretrain_backbone.py`` runs before it trains: the backbone must be fully
trainable, and the probe's dataset must be registered."""

from __future__ import annotations

import logging
from typing import Any

from omegaconf import DictConfig, ListConfig
from torch import nn

__all__ = ["DEFAULT_PROBE_DATASET", "check_trainable_backbone", "probe_dataset_name"]

logger = logging.getLogger(__name__)

# The probe's dataset when --probe-dataset is not given (and only if it is registered).
DEFAULT_PROBE_DATASET = "shapes_val"
_MAX_NAMES = 5


def _frozen_config_keys(node: Any, path: str) -> list[str]:
    """``key=value`` overrides that unfreeze the LazyConfig backbone ``node`` at ``path``:
    each ``norm`` set to ``"FrozenBN"`` -> ``BN``, each ``freeze_at`` above 0 -> 0."""
    overrides = []
    if isinstance(node, DictConfig):
        for key in node.keys():
            value = node[key]
            if key == "norm" and value == "FrozenBN":
                overrides.append(f"{path}.{key}=BN")
            elif key == "freeze_at" and isinstance(value, int) and value > 0:
                overrides.append(f"{path}.{key}=0")
            elif isinstance(value, (DictConfig, ListConfig)):
                overrides += _frozen_config_keys(value, f"{path}.{key}")
    elif isinstance(node, ListConfig):
        for index, value in enumerate(node):
            overrides += _frozen_config_keys(value, f"{path}.{index}")
    return overrides


def _names(names: list[str]) -> str:
    shown = ", ".join(names[:_MAX_NAMES])
    return shown + (f", ... ({len(names)} in all)" if len(names) > _MAX_NAMES else "")


def check_trainable_backbone(
    backbone: nn.Module, config_node: Any = None, config_path: str = "model.backbone"
) -> None:
    """Refuse a backbone with frozen parameters or frozen BatchNorm layers: self-distillation
    starts from a random backbone, so these would stay random (and never-trained statistics)
    in ``backbone.pth``, which then replaces the detector's ImageNet weights.

    Args:
        backbone: the instantiated backbone.
        config_node: its LazyConfig node, to name the overrides that unfreeze it.
        config_path: where that node sits in the config.

    Raises:
        ValueError: naming the frozen parameters / layers and what to set instead.
    """
    frozen = [name for name, param in backbone.named_parameters() if not param.requires_grad]
    frozen_norms = [
        name or "<backbone>"
        for name, module in backbone.named_modules()
        if type(module).__name__ == "FrozenBatchNorm2d"
    ]
    if not frozen and not frozen_norms:
        return
    found = []
    if frozen:
        found.append(f"{len(frozen)} frozen parameters (requires_grad=False: {_names(frozen)})")
    if frozen_norms:
        found.append(f"{len(frozen_norms)} FrozenBatchNorm2d layers ({_names(frozen_norms)})")
    overrides = _frozen_config_keys(config_node, config_path) if config_node is not None else []
    fix = (
        f"add the config overrides {' '.join(overrides)} to the command (after the options; "
        "the detector loads the pretrained BN statistics into its FrozenBN layers)"
        if overrides
        else f"set {config_path} to train every layer (norm 'BN' instead of 'FrozenBN', "
        "freeze_at=0 or no frozen stages)"
    )
    raise ValueError(
        f"{config_path}: expected a fully trainable backbone to pretrain, got "
        f"{' and '.join(found)}. Pretraining starts from random weights, so these would stay "
        f"random in backbone.pth. To pretrain it, {fix}."
    )


def probe_dataset_name(requested: str | None) -> str | None:
    """The dataset the k-NN probe uses: ``requested`` (``''``: no probe); when not given,
    :data:`DEFAULT_PROBE_DATASET` if it is registered (loading the config may register it),
    else none.

    Raises:
        ValueError: ``requested`` is not a registered dataset.
    """
    from detectron2.data import DatasetCatalog

    registered = DatasetCatalog.list()
    if requested is None:
        if DEFAULT_PROBE_DATASET in registered:
            return DEFAULT_PROBE_DATASET
        logger.info(
            "No k-NN probe: --probe-dataset not given and %r is not registered",
            DEFAULT_PROBE_DATASET,
        )
        return None
    if not requested:
        return None
    if requested not in registered:
        raise ValueError(
            f"--probe-dataset: expected a registered dataset with boxes, got {requested!r} "
            f"(registered: {', '.join(sorted(registered)) or 'none'}). Register it in the "
            "config, or give --probe-dataset '' to train without the probe."
        )
    return requested
