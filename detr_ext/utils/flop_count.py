"""FLOP counting for detr_ext models: detectron2's ``FlopCountAnalysis`` taught the
multi-scale deformable attention operator.

fvcore counts a fused multiply-add as one FLOP (a ``[M, K] x [K, N]`` matmul is ``M*K*N``) and
skips operators it has no rule for, with a warning. Without a rule the ``detr_ext::ms_deform_attn``
operator would count as zero, which understates every deformable model. The rule here counts,
for every output channel of every query, head, level and sampling point, the bilinear
interpolation (4 multiply-adds: one per corner) and the attention weighting (1), so

    FLOPs(ms_deform_attn) = 5 * B * Q * H * L * P * D     (C = H * D channels)

Without the compiled operator the model runs the ``grid_sample`` reference path; its
``aten::grid_sampler`` is counted as 4 multiply-adds per output element (bilinear), while the
weighting (an elementwise product and a sum) is skipped as fvcore skips all elementwise
operators, so the same model counts 4/5 of the operator's FLOPs there.

fvcore also has no rule for the attention products of ``nn.MultiheadAttention``: ``aten::baddbmm``
(the logits with a mask, as in DETR's encoder and decoder) and
``aten::scaled_dot_product_attention`` (its fused path); both are counted here as the batched
matmuls they are.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from torch import nn

__all__ = [
    "baddbmm_flop_jit",
    "flop_count_handles",
    "grid_sampler_flop_jit",
    "model_flop_analysis",
    "ms_deform_attn_flop_jit",
    "ms_deform_attn_flops",
    "scaled_dot_product_attention_flop_jit",
]

MSDA_OP = "detr_ext::ms_deform_attn"
GRID_SAMPLER_OPS = ("aten::grid_sampler", "aten::grid_sampler_2d")

# Multiply-adds per sampled value: 4 bilinear corner weights and 1 attention weight.
_MSDA_MACS_PER_SAMPLE = 5
_BILINEAR_MACS = 4


def ms_deform_attn_flops(
    value_shape: Sequence[int], sampling_locations_shape: Sequence[int]
) -> int:
    """FLOPs (multiply-adds) of one ``ms_deform_attn`` call.

    Args:
        value_shape: ``(B, S, H, D)`` of ``value``.
        sampling_locations_shape: ``(B, Q, H, L, P, 2)`` of ``sampling_locations``.

    Returns:
        ``5 * B * Q * H * L * P * D``.
    """
    if len(value_shape) != 4 or len(sampling_locations_shape) != 6:
        raise ValueError(
            "ms_deform_attn_flops: expected value (B, S, H, D) and sampling_locations "
            f"(B, Q, H, L, P, 2), got {tuple(value_shape)} and {tuple(sampling_locations_shape)}"
        )
    batch, queries, heads, levels, points, _ = sampling_locations_shape
    channels_per_head = value_shape[3]
    return _MSDA_MACS_PER_SAMPLE * batch * queries * heads * levels * points * channels_per_head


def ms_deform_attn_flop_jit(inputs: list[Any], outputs: list[Any]) -> int:
    """fvcore handle of ``detr_ext::ms_deform_attn``: inputs are the traced values of
    ``(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)``."""
    from fvcore.nn.jit_handles import get_shape

    return ms_deform_attn_flops(get_shape(inputs[0]), get_shape(inputs[3]))


def grid_sampler_flop_jit(inputs: list[Any], outputs: list[Any]) -> int:
    """fvcore handle of ``aten::grid_sampler``: 4 multiply-adds per output element (bilinear;
    nearest mode is counted the same, an upper bound)."""
    from fvcore.nn.jit_handles import get_shape

    return _BILINEAR_MACS * math.prod(get_shape(outputs[0]))


def baddbmm_flop_jit(inputs: list[Any], outputs: list[Any]) -> int:
    """fvcore handle of ``aten::baddbmm`` (``input + batch1 @ batch2``, what
    ``nn.MultiheadAttention`` computes its attention logits with when given a mask): the batched
    matmul's ``B * n * m * p`` multiply-adds, as fvcore counts ``aten::bmm``."""
    from fvcore.nn.jit_handles import get_shape

    batch, rows, inner = get_shape(inputs[1])
    columns = get_shape(inputs[2])[-1]
    return batch * rows * inner * columns


def scaled_dot_product_attention_flop_jit(inputs: list[Any], outputs: list[Any]) -> int:
    """fvcore handle of ``aten::scaled_dot_product_attention``: the two batched matmuls,
    ``query @ key^T`` and ``weights @ value`` (``... * L * S * (E + E_v)`` multiply-adds); the
    softmax and scaling are elementwise and not counted."""
    from fvcore.nn.jit_handles import get_shape

    query, key, value = (get_shape(value) for value in inputs[:3])
    batch = math.prod(query[:-2])
    return batch * query[-2] * key[-2] * (query[-1] + value[-1])


def flop_count_handles() -> dict[str, Callable[[list[Any], list[Any]], int]]:
    """Operator name -> fvcore handle for the operators detr_ext models add to fvcore's."""
    handles = {
        MSDA_OP: ms_deform_attn_flop_jit,
        "aten::baddbmm": baddbmm_flop_jit,
        "aten::scaled_dot_product_attention": scaled_dot_product_attention_flop_jit,
    }
    handles.update({name: grid_sampler_flop_jit for name in GRID_SAMPLER_OPS})
    return handles


def model_flop_analysis(model: nn.Module, batched_inputs: list[dict[str, Any]]) -> Any:
    """detectron2's ``FlopCountAnalysis`` of ``model`` on ``batched_inputs`` (detectron2's
    list-of-dicts input), with :func:`flop_count_handles`. ``model`` should be in eval mode;
    the analysis traces one forward pass when first asked for a count."""
    from detectron2.utils.analysis import FlopCountAnalysis

    analysis = FlopCountAnalysis(model, batched_inputs)
    analysis.set_op_handle(**flop_count_handles())
    return analysis
