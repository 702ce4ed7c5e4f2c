"""detr_ext.ops: the multi-scale deformable attention operator.

Imports torch only (no detectron2), so the operator can be built, tested and benchmarked on any
machine with PyTorch. See ``ms_deform_attn`` for the API and ``build_info()`` for what was built.
"""

from ._extension import build_info, compiled_kernel_available
from .ms_deform_attn import BACKENDS, ms_deform_attn, resolve_backend
from .reference import ms_deform_attn_pytorch

__all__ = [
    "BACKENDS",
    "build_info",
    "compiled_kernel_available",
    "ms_deform_attn",
    "ms_deform_attn_pytorch",
    "resolve_backend",
]
