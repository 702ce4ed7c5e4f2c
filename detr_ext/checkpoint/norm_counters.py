"""BatchNorm step counters in a checkpoint whose model has frozen normalization there.

A backbone trained with ``BatchNorm2d`` (ImageNet weights, ``tools/pretrain_backbone.py``'s
``backbone.pth``) stores ``<layer>.num_batches_tracked`` next to each layer's statistics. A
detector built with detectron2's ``FrozenBatchNorm2d`` (the R50 configs) keeps the weight,
bias and running statistics but has no step counter, so detectron2's checkpointer listed every
counter as an "unexpected key" on load: dozens of lines that hide a real problem in the same
report. :class:`DropFrozenNormCountersMixin` drops exactly those counters before loading: a
``num_batches_tracked`` key whose layer exists in the model with running statistics but without
a counter. Counters of layers the model does not have stay and are reported as before.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, MutableMapping
from typing import Any

__all__ = ["DropFrozenNormCountersMixin", "frozen_norm_counters"]

COUNTER = "num_batches_tracked"
DDP_PREFIX = "module."

logger = logging.getLogger(__name__)


def frozen_norm_counters(checkpoint_keys: Iterable[str], model_keys: Iterable[str]) -> list[str]:
    """The ``*.num_batches_tracked`` keys among ``checkpoint_keys`` that belong to a layer the
    model has with running statistics but without a step counter (a frozen normalization).

    Checkpoint keys saved from a ``DistributedDataParallel`` model (``module.`` prefix) are
    compared without the prefix, as detectron2's checkpointer loads them.
    """
    model_keys = set(model_keys)
    found = []
    for key in checkpoint_keys:
        if not key.endswith("." + COUNTER):
            continue
        name = key[len(DDP_PREFIX) :] if key.startswith(DDP_PREFIX) else key
        layer = name[: -len(COUNTER)]
        if name not in model_keys and layer + "running_mean" in model_keys:
            found.append(key)
    return found


class DropFrozenNormCountersMixin:
    """For a detectron2 / fvcore ``Checkpointer`` subclass (before the checkpointer among the
    bases): the checkpoint's BatchNorm step counters of layers the model keeps frozen are
    dropped before loading (see the module docstring), logged once with their number."""

    def _load_model(self, checkpoint: Any) -> Any:
        state = checkpoint.get("model") if isinstance(checkpoint, MutableMapping) else None
        if isinstance(state, MutableMapping):
            model = self.model  # type: ignore[attr-defined]
            dropped = frozen_norm_counters(list(state), model.state_dict())
            for key in dropped:
                del state[key]
            if dropped:
                logger.info(
                    "Ignored %d BatchNorm step counters (%s, ...) of layers the model keeps "
                    "frozen (FrozenBatchNorm2d has no num_batches_tracked).",
                    len(dropped),
                    dropped[0],
                )
        return super()._load_model(checkpoint)  # type: ignore[misc]
