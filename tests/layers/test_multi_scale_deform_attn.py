"""The MultiScaleDeformableAttention module."""

from __future__ import annotations

import math

import pytest
import torch

from detr_ext.layers.multi_scale_deform_attn import MultiScaleDeformableAttention
from detr_ext.ops import ms_deform_attn_pytorch

SHAPES = torch.tensor([[6, 8], [3, 4], [1, 1]])
STARTS = torch.tensor([0, 48, 60])
NUM_VALUES = 61


def _module(**kwargs) -> MultiScaleDeformableAttention:
    module = MultiScaleDeformableAttention(
        embed_dim=32, num_heads=4, num_levels=3, num_points=2, **kwargs
    ).double()
    # Non-trivial offsets and weights so the tests see them.
    with torch.no_grad():
        module.sampling_offsets.weight.normal_(0, 0.3)
        module.attention_weights.weight.normal_(0, 0.3)
    return module


def _inputs(batch=2, queries=5, coords=2):
    query = torch.randn(batch, queries, 32, dtype=torch.float64)
    value = torch.randn(batch, NUM_VALUES, 32, dtype=torch.float64)
    if coords == 2:
        reference_points = torch.rand(batch, queries, 3, 2, dtype=torch.float64)
    else:
        centres = torch.rand(batch, queries, 1, 2, dtype=torch.float64)
        sizes = torch.rand(batch, queries, 1, 2, dtype=torch.float64) * 0.5 + 0.05
        reference_points = torch.cat([centres, sizes], -1).expand(-1, -1, 3, -1)
    return query, value, reference_points


def _by_hand(module, query, value, reference_points, query_pos=None, mask=None):
    """The module's computation written out with the reference op."""
    batch, queries, _ = query.shape
    identity = query
    if query_pos is not None:
        query = query + query_pos
    projected = module.value_proj(value)
    if mask is not None:
        projected = projected * (~mask)[..., None]
    projected = projected.view(batch, NUM_VALUES, 4, 8)
    offsets = module.sampling_offsets(query).view(batch, queries, 4, 3, 2, 2)
    weights = module.attention_weights(query).view(batch, queries, 4, 6).softmax(-1)
    weights = weights.view(batch, queries, 4, 3, 2)
    if reference_points.shape[-1] == 2:
        scale = SHAPES.flip(-1).double()  # (width, height)
        locations = reference_points[:, :, None, :, None] + offsets / scale[:, None]
    else:
        locations = (
            reference_points[:, :, None, :, None, :2]
            + offsets / 2 * reference_points[:, :, None, :, None, 2:] * 0.5
        )
    sampled = ms_deform_attn_pytorch(projected, SHAPES, locations, weights)
    return identity + module.output_proj(sampled)


@pytest.mark.parametrize("coords", [2, 4])
def test_matches_hand_written_computation(coords):
    module = _module()
    query, value, reference_points = _inputs(coords=coords)
    query_pos = torch.randn_like(query)
    output = module(
        query,
        value=value,
        query_pos=query_pos,
        reference_points=reference_points,
        spatial_shapes=SHAPES,
        level_start_index=STARTS,
    )
    assert output.shape == query.shape
    expected = _by_hand(module, query, value, reference_points, query_pos=query_pos)
    assert (output - expected).abs().max() < 1e-10


def test_padding_mask_zeroes_padded_values():
    module = _module()
    query, value, reference_points = _inputs()
    mask = torch.zeros(2, NUM_VALUES, dtype=torch.bool)
    mask[0, 40:48] = True
    mask[1, 50:] = True
    kwargs = dict(
        reference_points=reference_points, spatial_shapes=SHAPES, level_start_index=STARTS
    )
    output = module(query, value=value, key_padding_mask=mask, **kwargs)
    changed = value.clone()
    changed[mask] = torch.randn_like(changed[mask]) * 100
    assert torch.allclose(output, module(query, value=changed, key_padding_mask=mask, **kwargs))
    assert not torch.allclose(output, module(query, value=changed, **kwargs))
    expected = _by_hand(module, query, value, reference_points, mask=mask)
    assert (output - expected).abs().max() < 1e-10


def test_identity_and_value_defaults():
    module = _module()
    query = torch.randn(1, NUM_VALUES, 32, dtype=torch.float64)
    reference_points = torch.rand(1, NUM_VALUES, 3, 2, dtype=torch.float64)
    kwargs = dict(
        reference_points=reference_points, spatial_shapes=SHAPES, level_start_index=STARTS
    )
    self_attention = module(query, **kwargs)
    torch.testing.assert_close(self_attention, module(query, value=query, identity=query, **kwargs))
    identity = torch.randn_like(query)
    shifted = module(query, identity=identity, **kwargs)
    torch.testing.assert_close(shifted - identity, self_attention - query)


def test_batch_first_false_is_transposed_batch_first():
    module = _module()
    query, value, reference_points = _inputs()
    kwargs = dict(
        reference_points=reference_points, spatial_shapes=SHAPES, level_start_index=STARTS
    )
    expected = module(query, value=value, **kwargs)
    module.batch_first = False
    output = module(query.transpose(0, 1), value=value.transpose(0, 1), **kwargs)
    torch.testing.assert_close(output.transpose(0, 1), expected)


def test_deformable_detr_initialisation():
    module = MultiScaleDeformableAttention(embed_dim=64, num_heads=8, num_levels=4, num_points=4)
    assert torch.count_nonzero(module.sampling_offsets.weight) == 0
    offsets = module.sampling_offsets.bias.view(8, 4, 4, 2)
    for head in range(8):
        angle = 2 * math.pi * head / 8
        direction = torch.tensor([math.cos(angle), math.sin(angle)])
        direction = direction / direction.abs().max()
        for point in range(4):
            torch.testing.assert_close(offsets[head, 2, point], direction * (point + 1))
    assert torch.count_nonzero(module.attention_weights.weight) == 0
    assert torch.count_nonzero(module.attention_weights.bias) == 0
    assert torch.count_nonzero(module.value_proj.bias) == 0
    assert module.value_proj.weight.abs().max() <= math.sqrt(6 / 128) + 1e-6


def test_detrex_parameter_names_and_shapes():
    module = MultiScaleDeformableAttention()
    shapes = {name: tuple(p.shape) for name, p in module.state_dict().items()}
    assert shapes == {
        "sampling_offsets.weight": (256, 256),
        "sampling_offsets.bias": (256,),
        "attention_weights.weight": (128, 256),
        "attention_weights.bias": (128,),
        "value_proj.weight": (256, 256),
        "value_proj.bias": (256,),
        "output_proj.weight": (256, 256),
        "output_proj.bias": (256,),
    }


def test_backends_agree_and_backward_runs():
    module = _module()
    query, value, reference_points = _inputs(coords=4)
    kwargs = dict(
        reference_points=reference_points, spatial_shapes=SHAPES, level_start_index=STARTS
    )
    module.backend = "pytorch"
    expected = module(query, value=value, **kwargs)
    module.backend = "auto"
    output = module(query, value=value, **kwargs)
    assert (output - expected).abs().max() < 1e-10
    output.sum().backward()
    assert module.sampling_offsets.weight.grad.abs().sum() > 0
    assert module.value_proj.weight.grad.abs().sum() > 0


def test_errors_name_expected_and_got():
    module = _module()
    query, value, reference_points = _inputs()
    with pytest.raises(ValueError, match="divisible"):
        MultiScaleDeformableAttention(embed_dim=30, num_heads=4)
    with pytest.raises(ValueError, match="reference_points"):
        module(query, value=value, spatial_shapes=SHAPES, level_start_index=STARTS)
    with pytest.raises(ValueError, match=r"reference_points of shape \[2, 5, 3, 2 or 4\]"):
        module(
            query,
            value=value,
            reference_points=reference_points[..., :1],
            spatial_shapes=SHAPES,
            level_start_index=STARTS,
        )
    with pytest.raises(ValueError, match=r"spatial_shapes of shape \[3, 2\]"):
        module(
            query,
            value=value,
            reference_points=reference_points,
            spatial_shapes=SHAPES[:2],
            level_start_index=STARTS[:2],
        )
    with pytest.raises(ValueError, match="key_padding_mask"):
        module(
            query,
            value=value,
            key_padding_mask=torch.zeros(2, 3, dtype=torch.bool),
            reference_points=reference_points,
            spatial_shapes=SHAPES,
            level_start_index=STARTS,
        )
    with pytest.raises(ValueError, match="cover 62 positions but value has N=61"):
        module(
            query,
            value=value,
            reference_points=reference_points,
            spatial_shapes=torch.tensor([[6, 8], [3, 4], [2, 1]]),
            level_start_index=STARTS,
        )


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_module_cast_to_reduced_precision_takes_float32_reference_points(dtype):
    """A model cast with .bfloat16() / .half() gets float32 reference points (the encoder's,
    from linspace): the locations become float32, the softmax weights stay reduced, and the op
    refused the pair, naming tensors the caller never passed."""
    module = _module()
    query, value, reference_points = _inputs()
    kwargs = dict(spatial_shapes=SHAPES, level_start_index=STARTS)
    expected = module(query, value=value, reference_points=reference_points, **kwargs)
    module = module.to(dtype)
    output = module(
        query.to(dtype), value=value.to(dtype), reference_points=reference_points.float(), **kwargs
    )
    assert output.dtype == dtype
    torch.testing.assert_close(output.double(), expected, atol=0.1, rtol=0.05)
