"""Full precision for matching costs and losses under mixed precision.

Under ``torch.autocast`` (or with a half-precision model) the predictions reach the matchers
and criteria as float16 or bfloat16. Their costs and losses are computed in float32 instead:
float16 has too small a range for them (``1 - sigmoid(20) + 1e-8`` rounds to 0, so the focal
cost takes ``log(0)``; sums over all queries and classes lose digits) and some of the ops
have no CPU kernel for it (``torch.cdist``). float64 inputs stay float64 (exact tests).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

__all__ = ["REDUCED_PRECISION_DTYPES", "autocast_disabled", "full_precision"]

REDUCED_PRECISION_DTYPES = (torch.float16, torch.bfloat16)
"""The dtypes :func:`full_precision` raises to float32."""


def full_precision(value: Any) -> Any:
    """``value`` with every float16 / bfloat16 tensor cast to float32, keeping autograd.

    Tensors of other dtypes (float32, float64, integer, bool) are returned as they are.
    Mappings, lists and tuples are converted element by element (e.g. a detector's outputs
    dict with its ``aux_outputs`` list); anything else (ints, None, ...) is returned as is.
    The cast is a differentiable op, so the gradient flows back to the half-precision
    tensor in its own dtype.
    """
    if isinstance(value, Tensor):
        return value.float() if value.dtype in REDUCED_PRECISION_DTYPES else value
    if isinstance(value, Mapping):
        return {key: full_precision(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(full_precision(item) for item in value)
    return value


def autocast_disabled(device: torch.device | str) -> contextlib.AbstractContextManager:
    """A context in which autocast is off for ``device``'s type, so ops run in the dtypes of
    their inputs (float32 after :func:`full_precision`) rather than autocast's choice.

    A no-op on device types without autocast support.
    """
    device_type = torch.device(device).type
    if not torch.amp.is_autocast_available(device_type):
        return contextlib.nullcontext()
    return torch.autocast(device_type=device_type, enabled=False)
