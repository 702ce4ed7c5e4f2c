"""ONNX translation of ``detr_ext::ms_deform_attn``: its grid_sample formulation in standard
ONNX operators (``GridSample``, opset >= 16), for ``torch.onnx.export(dynamo=True)``.

The exported program keeps the operator as one node; the ONNX exporter calls
:func:`ms_deform_attn_onnx` for it (``custom_translation_table``), which emits, per feature
level, a ``Slice`` of the flattened values, a ``Reshape`` to the level's map (its height and
width are read from ``spatial_shapes`` at run time, so any image size works), and a bilinear
``GridSample`` with zero padding and ``align_corners=0`` (the operator's sampling rule), then
weights and sums the samples as :func:`detr_ext.ops.ms_deform_attn_pytorch` does. Any ONNX
runtime runs the result; no custom-op library is needed.

Non-finite sampling locations or weights are not given the operator's NaN rule here
(a runtime's ``GridSample`` decides); detections from finite inputs are the same.
"""

from __future__ import annotations

from typing import Any

__all__ = ["MIN_OPSET", "ms_deform_attn_onnx", "translation_table"]

# GridSample exists from opset 16; the exporter's own operator library starts at 18.
MIN_OPSET = 18


def _static_dim(value: Any, axis: int, what: str) -> int:
    dim = value.shape[axis]
    if not isinstance(dim, int):
        raise ValueError(
            f"ms_deform_attn ONNX translation: expected a static {what} (axis {axis}), got "
            f"{dim!r}; only batch, queries and values may vary"
        )
    return dim


def ms_deform_attn_onnx(value, spatial_shapes, level_start_index, sampling_locations, weights):
    """``detr_ext::ms_deform_attn`` as ONNX operators (traced by the ONNX exporter).

    Args (ONNX values, shapes as in :func:`detr_ext.ops.ms_deform_attn`):
        value: ``[B, N, H, C]``; spatial_shapes: ``[L, 2]`` int64; level_start_index:
        ``[L]`` int64; sampling_locations: ``[B, Q, H, L, P, 2]``; weights: ``[B, Q, H, L, P]``.
        ``L``, ``H``, ``C`` and ``P`` must be static; ``B``, ``N`` and ``Q`` may be dynamic.

    Returns:
        ``[B, Q, H*C]``.
    """
    # The exporter runs this function under its graph builder: every op.* call records a node.
    from onnxscript import opset18 as op

    def ints(*values: int):
        return op.Constant(value_ints=list(values))

    num_levels = _static_dim(spatial_shapes, 0, "number of levels L")
    num_heads = _static_dim(value, 2, "number of heads H")
    channels = _static_dim(value, 3, "channels per head C")
    num_points = _static_dim(sampling_locations, 4, "number of points P")
    batch = op.Shape(value, start=0, end=1)
    num_values = op.Shape(value, start=1, end=2)
    num_queries = op.Shape(sampling_locations, start=1, end=2)

    # [B, N, H, C] -> [B*H, C, N]
    value_flat = op.Reshape(
        op.Transpose(value, perm=[0, 2, 3, 1]), op.Concat(ints(-1, channels), num_values, axis=0)
    )
    # [B, Q, H, L, P, 2] in [0, 1] -> [B*H, Q, L, P, 2] in grid_sample's [-1, 1]
    two = op.CastLike(op.Constant(value_float=2.0), sampling_locations)
    one = op.CastLike(op.Constant(value_float=1.0), sampling_locations)
    grids = op.Transpose(op.Sub(op.Mul(sampling_locations, two), one), perm=[0, 2, 1, 3, 4, 5])
    grids = op.Reshape(
        grids, op.Concat(ints(-1), num_queries, ints(num_levels, num_points, 2), axis=0)
    )
    sampled = []
    for level in range(num_levels):
        height = op.Reshape(op.Slice(spatial_shapes, ints(level, 0), ints(level + 1, 1)), ints(1))
        width = op.Reshape(op.Slice(spatial_shapes, ints(level, 1), ints(level + 1, 2)), ints(1))
        start = op.Slice(level_start_index, ints(level), ints(level + 1))
        value_level = op.Slice(value_flat, start, op.Add(start, op.Mul(height, width)), ints(2))
        # [B*H, C, h*w] -> [B*H, C, h, w]
        value_level = op.Reshape(value_level, op.Concat(ints(-1, channels), height, width, axis=0))
        grid_level = op.Gather(grids, op.Constant(value_int=level), axis=2)  # [B*H, Q, P, 2]
        sampled.append(
            op.GridSample(
                value_level, grid_level, mode="bilinear", padding_mode="zeros", align_corners=0
            )
        )  # [B*H, C, Q, P]
    samples = op.Concat(*sampled, axis=3)  # [B*H, C, Q, L*P], level-major like the weights
    # [B, Q, H, L, P] -> [B*H, 1, Q, L*P]
    weights = op.Reshape(
        op.Transpose(weights, perm=[0, 2, 1, 3, 4]),
        op.Concat(ints(-1, 1), num_queries, ints(num_levels * num_points), axis=0),
    )
    output = op.ReduceSum(op.Mul(samples, op.CastLike(weights, samples)), ints(-1), keepdims=0)
    # [B*H, C, Q] -> [B, H*C, Q] -> [B, Q, H*C]
    output = op.Reshape(output, op.Concat(batch, ints(num_heads * channels), num_queries, axis=0))
    return op.Transpose(output, perm=[0, 2, 1])


def translation_table() -> dict:
    """``custom_translation_table`` for ``torch.onnx.export``: the operator -> its ONNX form.

    Empty when the compiled extension is not loaded (``DETR_EXT_BUILD_EXTENSION=0``, or a
    failed build): the operator does not exist then, and a model without deformable attention
    (DETR) exports all the same; one with it fails earlier, saying that it needs the extension.
    """
    import torch

    import detr_ext.ops  # noqa: F401  (loads detr_ext._C, which defines the operator)

    if not hasattr(torch.ops.detr_ext, "ms_deform_attn"):
        return {}
    return {torch.ops.detr_ext.ms_deform_attn.default: ms_deform_attn_onnx}
