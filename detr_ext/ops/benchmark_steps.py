"""The two backends the MSDA benchmark (``tools/benchmark_msda.py``) times against each other,
as steps to call: one forward (under ``no_grad``) or forward+backward of the compiled op or of
the ``grid_sample`` baseline (:func:`step_function`), and how far their outputs differ
(:func:`output_difference`, within :data:`TOLERANCES` or the row compares nothing). Torch only,
like the rest of :mod:`detr_ext.ops`."""

from __future__ import annotations

import torch

from .benchmark import DTYPES, grid_sample_baseline, make_inputs
from .ms_deform_attn import ms_deform_attn

__all__ = [
    "BACKENDS",
    "MODES",
    "TOLERANCES",
    "clear_grads",
    "output_difference",
    "step_function",
]

# The timed backends (not the operator's backend choice, detr_ext.ops.BACKENDS) and steps.
BACKENDS = ("compiled", "pytorch")
MODES = ("forward", "forward_backward")


def step_function(backend: str, mode: str, inputs):
    """A closure running one forward (no_grad) or forward+backward of ``backend``."""
    value, spatial_shapes, level_start_index, locations, weights = inputs
    # The baseline's level sizes, read from the device once (every call would wait for the GPU).
    host_shapes = [tuple(shape) for shape in spatial_shapes.tolist()]

    def forward():
        if backend == "pytorch":
            return grid_sample_baseline(value, host_shapes, locations, weights)
        return ms_deform_attn(
            value, spatial_shapes, level_start_index, locations, weights, backend="compiled"
        )

    if mode == "forward":

        def run():
            with torch.no_grad():
                return forward()

        return run
    grad_output = None

    def run_with_backward():
        nonlocal grad_output
        clear_grads(inputs)
        output = forward()
        if grad_output is None:
            grad_output = torch.ones_like(output)
        output.backward(grad_output)

    return run_with_backward


def clear_grads(inputs) -> None:
    """Free the gradients a forward+backward step left on the inputs."""
    for tensor in inputs:
        tensor.grad = None


# Largest |compiled - pytorch| / (1 + |pytorch|) accepted per dtype; beyond it the two backends
# do not compute the same thing and the row's timings would compare nothing.
TOLERANCES = {"float64": 1e-9, "float32": 1e-4, "float16": 1e-2, "bfloat16": 5e-2}


def output_difference(problem, batch, dtype_name, device, locations) -> float:
    """Largest ``|compiled - pytorch| / (1 + |pytorch|)`` of the two forwards on one input."""
    inputs = make_inputs(problem, batch, DTYPES[dtype_name], device, locations)
    with torch.no_grad():
        compiled = step_function("compiled", "forward", inputs)().float()
        baseline = step_function("pytorch", "forward", inputs)().float()
    return float(((compiled - baseline).abs() / (1 + baseline.abs())).max())
