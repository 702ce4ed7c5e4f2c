"""Loading of the compiled extension ``detr_ext._C``.

A missing or broken build must never make the library unusable: the import error is kept and
reported by :func:`build_info`, and the MSDA front falls back to the PyTorch path.
"""

from __future__ import annotations

import functools
import importlib
import os

import torch

__all__ = ["build_info", "compiled_kernel_available", "extension_error", "load_extension"]

_OP_NAME = "detr_ext::ms_deform_attn"
# dtypes the compiled kernels take for ``value`` on every device they are built for.
SUPPORTED_VALUE_DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)


@functools.cache
def load_extension() -> str | None:
    """Imports ``detr_ext._C`` once; returns None on success, else why it is unavailable."""
    if os.environ.get("DETR_EXT_DISABLE_EXTENSION", "0") == "1":
        return "DETR_EXT_DISABLE_EXTENSION=1"
    try:
        importlib.import_module("detr_ext._C")
    except (ImportError, OSError) as error:
        return f"detr_ext._C could not be loaded ({type(error).__name__}: {error})"
    return None


def extension_error() -> str | None:
    """Why the compiled extension is unavailable, or None when it is loaded."""
    return load_extension()


# Filled once by _kernel_table(); plain data so that torch.compile traces the lookups below.
_KERNEL_TABLE: dict[str, bool] = {}


def _kernel_table() -> dict[str, bool]:
    if not _KERNEL_TABLE:
        loaded = load_extension() is None
        # Meta: the fake kernel (ms_deform_attn.py), for shape inference on the meta device.
        for key in ("CPU", "CUDA", "Meta"):
            _KERNEL_TABLE[key] = loaded and torch._C._dispatch_has_kernel_for_dispatch_key(
                _OP_NAME, key
            )
    return _KERNEL_TABLE


def _has_kernel(dispatch_key: str) -> bool:
    return _kernel_table()[dispatch_key]


def compiled_kernel_available(device_type: str, dtype: torch.dtype) -> str | None:
    """None when the compiled op serves ``device_type``/``dtype``, else the reason it cannot."""
    table = _kernel_table()
    if not (table["CPU"] or table["CUDA"]):
        return load_extension() or "detr_ext._C has no kernels registered"
    dispatch_key = {"cpu": "CPU", "cuda": "CUDA", "meta": "Meta"}.get(device_type)
    if dispatch_key is None or not table[dispatch_key]:
        return f"detr_ext._C was built without {device_type} kernels"
    if dtype not in SUPPORTED_VALUE_DTYPES:
        return f"the compiled kernels do not support value dtype {dtype}"
    return None


def build_info() -> dict:
    """What was built: loaded or not (and why), and the devices with compiled kernels."""
    error = load_extension()
    info = {"extension_loaded": error is None, "error": error, "kernels": []}
    if error is None:
        info["kernels"] = [key.lower() for key in ("CPU", "CUDA") if _has_kernel(key)]
        info["build"] = torch.ops.detr_ext.build_info()
    info["torch"] = torch.__version__
    info["torch_cuda"] = torch.version.cuda
    return info
