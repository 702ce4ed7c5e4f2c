"""The multi-scale deformable attention operator: validation, backend choice, autograd, AMP.

``ms_deform_attn`` is the one entry point the rest of the library calls. With the compiled
extension loaded it runs ``torch.ops.detr_ext.ms_deform_attn`` (C++ on CPU, CUDA on GPU), a real
PyTorch operator: its derivative for value, sampling locations and attention weights is
registered in C++ (csrc/ms_deform_attn_autograd.cpp: no Python in an eager step's forward or
backward), and ``register_fake`` lets ``torch.compile(fullgraph=True)`` trace it without a graph
break. Without the extension (or for a device/dtype it was not built for), it runs the grid_sample
reference path and says why, once.
"""

from __future__ import annotations

import os
import warnings

import torch
from torch._subclasses.fake_tensor import FakeTensor

from ._extension import _kernel_table, compiled_kernel_available, load_extension
from .reference import ms_deform_attn_pytorch

__all__ = ["BACKENDS", "ms_deform_attn", "resolve_backend"]

BACKENDS = ("auto", "compiled", "pytorch")
BACKEND_ENV = "DETR_EXT_MSDA_BACKEND"
_REDUCED_DTYPES = (torch.float16, torch.bfloat16)
_FLOAT_DTYPES = (torch.float64, torch.float32, *_REDUCED_DTYPES)
_warned: set[str] = set()


# ------------------------------------------------------------------ registration with torch
def _register() -> bool:
    if load_extension() is not None:
        return False

    @torch.library.register_fake("detr_ext::ms_deform_attn")
    def _forward_fake(value, spatial_shapes, level_start_index, locations, weights):
        batch, _, num_heads, channels = value.shape
        return value.new_empty((batch, locations.shape[1], num_heads * channels))

    @torch.library.register_fake("detr_ext::ms_deform_attn_backward")
    def _backward_fake(grad_output, value, spatial_shapes, level_start_index, locations, weights):
        # The kernels return contiguous gradients whatever the inputs' strides (empty_like
        # would keep them, and inductor then asserts on the difference).
        return (
            value.new_empty(value.shape),
            locations.new_empty(locations.shape),
            weights.new_empty(weights.shape),
        )

    # The op's derivative is registered in C++ (csrc/ms_deform_attn_autograd.cpp); for
    # backward(create_graph=True) it calls this op, implemented here with the PyTorch path.
    _LIBRARY.impl("ms_deform_attn_grad_graph", _grad_graph, "CompositeImplicitAutograd")
    return True


_LIBRARY = torch.library.Library("detr_ext", "IMPL")


def _grad_graph(grad_output, value, spatial_shapes, level_start_index, locations, weights, mask):
    """The compiled op's gradients as a graph (double backward: a gradient penalty, a Hessian
    product): the backward kernel has no derivative of its own, so these come from the PyTorch
    path, which computes the same function (within floating-point rounding). ``mask`` says which
    of value, locations, weights need a gradient; the others get zeros."""
    del level_start_index  # the PyTorch path splits value by spatial_shapes alone
    tensors = (value, locations, weights)
    wanted = [index for index, want in enumerate(mask) if want]
    grads = [None if want else torch.zeros_like(tensor) for tensor, want in zip(tensors, mask)]
    if wanted:
        inputs = list(tensors)
        for index in wanted:
            tensor = tensors[index]
            inputs[index] = tensor if tensor.requires_grad else tensor.detach().requires_grad_()
        leaves = [inputs[index] for index in wanted]
        output = ms_deform_attn_pytorch(inputs[0], spatial_shapes, inputs[1], inputs[2])
        computed = torch.autograd.grad(output, leaves, grad_output, create_graph=True)
        for index, grad in zip(wanted, computed, strict=True):
            grads[index] = grad
    return tuple(grads)


_REGISTERED = _register()
_kernel_table()  # resolve once, outside any torch.compile trace


# ------------------------------------------------------------------ validation
def _shape_error(name: str, expected: str, tensor: torch.Tensor) -> ValueError:
    return ValueError(
        f"ms_deform_attn: expected {name} of shape {expected}, got {list(tensor.shape)}"
    )


def _check_shapes(value, spatial_shapes, level_start_index, locations, weights) -> None:
    """Rank and size agreement, from metadata only (no device sync)."""
    if value.dim() != 4:
        raise _shape_error("value", "[B, N, H, C]", value)
    batch, _, num_heads, _ = value.shape
    if spatial_shapes.dim() != 2 or spatial_shapes.shape[1] != 2:
        raise _shape_error("spatial_shapes", "[L, 2]", spatial_shapes)
    num_levels = spatial_shapes.shape[0]
    if num_levels == 0:
        # No level means nothing to attend to: almost surely an empty list of feature maps.
        raise ValueError(
            "ms_deform_attn: expected at least one level, got spatial_shapes of shape "
            f"{list(spatial_shapes.shape)}"
        )
    if level_start_index.dim() != 1 or level_start_index.shape[0] != num_levels:
        raise _shape_error("level_start_index", f"[L={num_levels}]", level_start_index)
    if locations.dim() != 6 or locations.shape[-1] != 2:
        raise _shape_error("sampling_locations", "[B, Q, H, L, P, 2]", locations)
    if weights.dim() != 5:
        raise _shape_error("attention_weights", "[B, Q, H, L, P]", weights)
    expected = {
        "batch size (B)": (batch, locations.shape[0], weights.shape[0]),
        "number of heads (H)": (num_heads, locations.shape[2], weights.shape[2]),
        "number of levels (L)": (num_levels, locations.shape[3], weights.shape[3]),
    }
    for what, (want, from_locations, from_weights) in expected.items():
        if from_locations != want or from_weights != want:
            raise ValueError(
                f"ms_deform_attn: {what} disagrees between inputs: value/spatial_shapes say "
                f"{want}, sampling_locations {list(locations.shape)} and attention_weights "
                f"{list(weights.shape)}"
            )
    if locations.shape[1] != weights.shape[1] or locations.shape[4] != weights.shape[4]:
        raise ValueError(
            "ms_deform_attn: queries (Q) and points (P) must agree between sampling_locations "
            f"{list(locations.shape)} and attention_weights {list(weights.shape)}"
        )


def _check_devices_and_dtypes(value, spatial_shapes, level_start_index, locations, weights):
    tensors = {
        "spatial_shapes": spatial_shapes,
        "level_start_index": level_start_index,
        "sampling_locations": locations,
        "attention_weights": weights,
    }
    for name, tensor in tensors.items():
        if tensor.device != value.device:
            raise ValueError(
                f"ms_deform_attn: expected {name} on the device of value ({value.device}), "
                f"got {tensor.device}"
            )
    for name in ("spatial_shapes", "level_start_index"):
        if tensors[name].dtype.is_floating_point or tensors[name].dtype.is_complex:
            raise ValueError(
                f"ms_deform_attn: expected an integer {name}, got {tensors[name].dtype}"
            )
    if value.dtype not in _FLOAT_DTYPES:
        raise ValueError(
            f"ms_deform_attn: expected value of dtype float64/float32/float16/bfloat16, "
            f"got {value.dtype}"
        )
    if locations.dtype != weights.dtype:
        raise ValueError(
            "ms_deform_attn: expected sampling_locations and attention_weights of one dtype, got "
            f"{locations.dtype} and {weights.dtype}"
        )
    if locations.dtype != value.dtype and not (
        value.dtype in _REDUCED_DTYPES and locations.dtype == torch.float32
    ):
        allowed = (
            f"{value.dtype} or torch.float32" if value.dtype in _REDUCED_DTYPES else value.dtype
        )
        raise ValueError(
            f"ms_deform_attn: expected sampling_locations/attention_weights of dtype {allowed} "
            f"for value of dtype {value.dtype}, got {locations.dtype}"
        )


def _without_values(*tensors: torch.Tensor) -> bool:
    """Whether any of ``tensors`` has no data to read: a meta tensor, or a fake one
    (``FakeTensorMode``, shape propagation) outside a torch.compile trace."""
    return any(tensor.is_meta or isinstance(tensor, FakeTensor) for tensor in tensors)


def _check_level_values(spatial_shapes, level_start_index, num_values: int) -> None:
    """Level sizes sum to N and the start offsets are their exclusive cumulative sum.

    This reads the tensors on the host. On CPU that is free; on CUDA it is done once per
    (tensor, version) pair and remembered on the tensor, so a model that passes the same
    ``spatial_shapes`` to every layer syncs once per forward, not once per call. Skipped while
    torch.compile / torch.export trace and for meta or fake tensors (no values to read); the
    CPU kernel checks the same at run time, the CUDA kernels do not (README).
    """
    if torch.compiler.is_compiling() or _without_values(spatial_shapes, level_start_index):
        return
    key = (spatial_shapes._version, level_start_index._version, id(level_start_index), num_values)
    if spatial_shapes.is_cuda and getattr(spatial_shapes, "_detr_ext_checked", None) == key:
        return
    shapes = spatial_shapes.tolist()
    starts = level_start_index.tolist()
    if any(height <= 0 or width <= 0 for height, width in shapes):
        raise ValueError(f"ms_deform_attn: spatial_shapes must be positive, got {shapes}")
    sizes = [height * width for height, width in shapes]
    if sum(sizes) != num_values:
        raise ValueError(
            f"ms_deform_attn: spatial_shapes {shapes} cover {sum(sizes)} positions but value "
            f"has N={num_values}"
        )
    expected_starts = [sum(sizes[:level]) for level in range(len(sizes))]
    if starts != expected_starts:
        raise ValueError(
            f"ms_deform_attn: level_start_index {starts} does not match spatial_shapes {shapes}; "
            f"expected {expected_starts}"
        )
    if spatial_shapes.is_cuda:
        spatial_shapes._detr_ext_checked = key


# ------------------------------------------------------------------ backend and AMP
def _tracked_by_torch_func(*tensors: torch.Tensor) -> bool:
    """Whether a ``torch.func`` transform (``grad``, ``vjp``, ``jacrev``, ``jvp``, ``vmap``)
    tracks one of ``tensors``, or runs while one of them needs a gradient of plain autograd.
    The compiled op has no batching rule for ``vmap`` and its derivative is a C++ autograd
    Function, which functorch refuses ("cannot use C++ torch::autograd::Function with functorch
    transforms"), so such calls take the PyTorch path: the same function, which every transform
    supports. Inputs a transform does not track and that need no gradient (constants inside it)
    keep the compiled op (run without an autograd node); so does tracing by torch.compile /
    torch.export."""
    if torch.compiler.is_compiling():
        return False
    functorch = torch._C._functorch
    if functorch.peek_interpreter_stack() is None:
        return False  # no transform is running
    return any(
        functorch.is_functorch_wrapped_tensor(tensor) or tensor.requires_grad for tensor in tensors
    )


def resolve_backend(backend: str | None, value: torch.Tensor) -> str:
    """Returns "compiled" or "pytorch" for this call.

    ``backend`` None reads ``DETR_EXT_MSDA_BACKEND`` (default "auto"). "auto" takes the compiled
    kernel when it is built for the tensor's device and dtype, else the PyTorch path with one
    warning naming the reason; "compiled" raises instead of falling back.
    """
    if backend is None:
        backend = os.environ.get(BACKEND_ENV, "auto")
    if backend not in BACKENDS:
        raise ValueError(f"ms_deform_attn: backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "pytorch":
        return backend
    reason = compiled_kernel_available(value.device.type, value.dtype)
    if reason is None:
        return "compiled"
    if backend == "compiled":
        raise RuntimeError(f"ms_deform_attn: backend='compiled' is unavailable: {reason}")
    if reason not in _warned:
        _warned.add(reason)
        warnings.warn(
            f"detr_ext: multi-scale deformable attention falls back to the PyTorch path "
            f"({reason}).",
            RuntimeWarning,
            stacklevel=3,
        )
    return "pytorch"


def _autocast(value, locations, weights, cpu_autocast_dtype: torch.dtype | None):
    """Casts for autocast: value to the autocast dtype, locations/weights to float32.

    On CUDA the op runs in the autocast dtype (float16 or bfloat16). On CPU it runs in float32
    unless ``cpu_autocast_dtype=torch.bfloat16`` asks for bf16. Locations stay float32 so that
    sampling keeps sub-pixel precision on large maps. float64 inputs are never cast.
    """
    if cpu_autocast_dtype not in (None, torch.float32, *_REDUCED_DTYPES):
        raise ValueError(
            "ms_deform_attn: expected cpu_autocast_dtype None, torch.float32, torch.bfloat16 or "
            f"torch.float16, got {cpu_autocast_dtype!r}"
        )
    device_type = value.device.type
    if device_type not in ("cuda", "cpu") or not torch.is_autocast_enabled(device_type):
        return value, locations, weights
    if value.dtype not in (torch.float32, *_REDUCED_DTYPES):
        # float64 is never cast; anything else is left for the validation to reject.
        return value, locations, weights
    if not (locations.is_floating_point() and weights.is_floating_point()):
        return value, locations, weights
    if device_type == "cuda":
        value_dtype = torch.get_autocast_dtype("cuda")
    else:
        value_dtype = cpu_autocast_dtype or torch.float32
    return value.to(value_dtype), locations.float(), weights.float()


# ------------------------------------------------------------------ the entry point
def ms_deform_attn(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
    backend: str | None = None,
    cpu_autocast_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Multi-scale deformable attention (Deformable DETR, Zhu et al. 2021).

    Args:
        value: ``[B, N, H, C]`` values of all levels, flattened level after level.
        spatial_shapes: ``[L, 2]`` integer (height, width) per level, ``sum(h*w) == N``.
        level_start_index: ``[L]`` integer offset of each level in N.
        sampling_locations: ``[B, Q, H, L, P, 2]`` normalized (x, y); 0 and 1 are the outer
            edges of the map, points outside it sample zeros (grid_sample, align_corners=False).
        attention_weights: ``[B, Q, H, L, P]``.
        backend: "auto" | "compiled" | "pytorch"; None reads ``DETR_EXT_MSDA_BACKEND``.
        cpu_autocast_dtype: under CPU autocast, the dtype to compute in (float32 by default;
            ``torch.bfloat16`` to use the bf16 kernel).

    Returns:
        ``[B, Q, H*C]`` in value's dtype (after autocast).

    sampling_locations/attention_weights share value's dtype, or are float32 when value is
    float16/bfloat16 (float16/bfloat16 weights with float32 locations are widened to float32).
    Inputs may be non-contiguous. ``L`` must be at least 1 (a ValueError otherwise). Gradients
    can be differentiated again (``create_graph=True``; the second order comes from the
    PyTorch path).

    Non-finite inputs give the same result on every backend and device (the grid_sample
    semantics of CPU PyTorch, made device-independent):

    - a sampling point with a NaN or +-inf coordinate samples NaN: the output of its
      (batch, query, head) is NaN in all C channels; its attention-weight gradient and both its
      location gradients are NaN; it adds nothing to the value gradient (it reads no pixel).
      (CPU grid_sample alone leaves the gradient of the non-finite coordinate itself at 0; CUDA
      grid_sample, going by its source, samples zero at +-inf.)
    - a NaN or +-inf attention weight (+-inf counts as NaN: the sign of an infinite sum would
      depend on the order of the additions) makes the output of its (batch, query, head) and its
      location gradients NaN, keeps its weight gradient finite, and puts NaN into the value
      gradient of the in-map corners it samples.
    - finite locations far outside the map sample zero with zero gradients.

    Other (batch, query, head) rows and other points' gradients are unaffected.
    """
    _check_shapes(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
    # The autocast policy first: under autocast the inputs legitimately arrive in mixed dtypes
    # (e.g. bfloat16 attention weights from a Linear, float32 locations from the reference
    # points), and the policy's casts are what the kernels must then accept.
    value, sampling_locations, attention_weights = _autocast(
        value, sampling_locations, attention_weights, cpu_autocast_dtype
    )
    if attention_weights.dtype in _REDUCED_DTYPES and sampling_locations.dtype == torch.float32:
        # A model cast with .half() / .bfloat16(): float32 reference points make the locations
        # float32 while the softmax gives reduced weights. Widening them loses nothing.
        attention_weights = attention_weights.float()
    _check_devices_and_dtypes(
        value, spatial_shapes, level_start_index, sampling_locations, attention_weights
    )
    _check_level_values(spatial_shapes, level_start_index, value.shape[1])
    if resolve_backend(backend, value) == "pytorch" or _tracked_by_torch_func(
        value, sampling_locations, attention_weights
    ):
        return ms_deform_attn_pytorch(value, spatial_shapes, sampling_locations, attention_weights)
    return torch.ops.detr_ext.ms_deform_attn(
        value,
        spatial_shapes.long(),
        level_start_index.long(),
        sampling_locations,
        attention_weights,
    )
