"""Every input error of ms_deform_attn gives a ValueError that names expected and got."""

from __future__ import annotations

import pytest
import torch

from detr_ext.ops import ms_deform_attn
from tests.ops.msda_cases import Case, make_inputs

CASE = Case(2, 5, 4, 8, ((4, 6), (2, 3)), 3, "inside")


def _inputs():
    return list(make_inputs(CASE, torch.float32))


def _replace(index, tensor):
    inputs = _inputs()
    inputs[index] = tensor
    return inputs


VALUE, SHAPES, STARTS, LOCATIONS, WEIGHTS = _inputs()

ERRORS = {
    "value rank": (_replace(0, VALUE[0]), r"value of shape \[B, N, H, C\], got \[30, 4, 8\]"),
    "spatial_shapes rank": (_replace(1, SHAPES.flatten()), r"spatial_shapes of shape \[L, 2\]"),
    "level_start_index length": (_replace(2, STARTS[:1]), r"level_start_index of shape \[L=2\]"),
    "locations rank": (_replace(3, LOCATIONS[..., 0]), r"sampling_locations of shape"),
    "locations last dim": (
        _replace(3, LOCATIONS[..., :1]),
        r"sampling_locations of shape \[B, Q, H, L, P, 2\]",
    ),
    "weights rank": (_replace(4, WEIGHTS[..., 0]), r"attention_weights of shape \[B, Q, H, L, P\]"),
    "batch mismatch": (_replace(3, LOCATIONS[:1]), r"batch size \(B\) disagrees"),
    "heads mismatch": (_replace(4, WEIGHTS[:, :, :2]), r"number of heads \(H\) disagrees"),
    "levels mismatch": (_replace(3, LOCATIONS[:, :, :, :1]), r"number of levels \(L\) disagrees"),
    "points mismatch": (
        _replace(4, WEIGHTS[..., :2]),
        r"queries \(Q\) and points \(P\) must agree",
    ),
    "queries mismatch": (_replace(4, WEIGHTS[:, :3]), r"queries \(Q\) and points \(P\) must agree"),
    "shapes do not sum to N": (
        _replace(1, torch.tensor([[4, 6], [2, 2]])),
        r"cover 28 positions but value has N=30",
    ),
    "non-positive level": (
        _replace(1, torch.tensor([[5, 6], [0, 3]])),
        r"spatial_shapes must be positive",
    ),
    "start index inconsistent": (
        _replace(2, torch.tensor([0, 20])),
        r"level_start_index \[0, 20\] does not match .* expected \[0, 24\]",
    ),
    "float spatial_shapes": (_replace(1, SHAPES.float()), r"integer spatial_shapes"),
    "integer value": (_replace(0, VALUE.long()), r"value of dtype .* got torch.int64"),
    "locations dtype": (
        _replace(3, LOCATIONS.double()),
        r"sampling_locations and attention_weights of one dtype",
    ),
    "coords dtype vs value": (
        _replace(0, VALUE.double()),
        r"dtype torch.float64 for value of dtype torch.float64, got torch.float32",
    ),
    "device mismatch": (
        _replace(1, SHAPES.to("meta")),
        r"spatial_shapes on the device of value \(cpu\), got meta",
    ),
}


@pytest.mark.parametrize("name", list(ERRORS))
def test_validation_error(name):
    inputs, message = ERRORS[name]
    with pytest.raises(ValueError, match=message):
        ms_deform_attn(*inputs)


def test_reduced_value_accepts_float32_coordinates():
    value, shapes, starts, locations, weights = _inputs()
    out = ms_deform_attn(value.bfloat16(), shapes, starts, locations, weights)
    assert out.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="bfloat16 or torch.float32"):
        ms_deform_attn(value.bfloat16(), shapes, starts, locations.double(), weights.double())


@pytest.mark.parametrize("cpu_autocast_dtype", [None, torch.bfloat16], ids=str)
def test_cpu_autocast_accepts_bfloat16_weights_with_float32_locations(cpu_autocast_dtype):
    # Under autocast a Linear yields bfloat16 attention weights while the locations (from
    # float32 reference points) stay float32: the autocast casts come before the dtype checks.
    value, shapes, starts, locations, weights = _inputs()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = ms_deform_attn(
            value,
            shapes,
            starts,
            locations,
            weights.bfloat16(),
            cpu_autocast_dtype=cpu_autocast_dtype,
        )
    assert out.dtype == (cpu_autocast_dtype or torch.float32)
    expected = ms_deform_attn(value, shapes, starts, locations, weights.bfloat16().float())
    torch.testing.assert_close(out.float(), expected, atol=3e-2, rtol=3e-2)
    # Outside autocast too (a model cast with .bfloat16(): float32 reference points make the
    # locations float32, the softmax gives bfloat16 weights): the weights are widened.
    out = ms_deform_attn(value.bfloat16(), shapes, starts, locations, weights.bfloat16())
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), expected, atol=3e-2, rtol=3e-2)
    # Wider weights than locations are still refused (narrowing them would lose precision).
    with pytest.raises(ValueError, match="sampling_locations and attention_weights of one dtype"):
        ms_deform_attn(value.bfloat16(), shapes, starts, locations.bfloat16(), weights)


@pytest.mark.parametrize("dtype", [torch.int32, torch.float64, "bfloat16"], ids=str)
def test_cpu_autocast_dtype_is_checked(dtype):
    value, shapes, starts, locations, weights = _inputs()
    with pytest.raises(ValueError, match=rf"expected cpu_autocast_dtype None, .* got {dtype!r}"):
        ms_deform_attn(value, shapes, starts, locations, weights, cpu_autocast_dtype=dtype)


@pytest.mark.parametrize("backend", ["compiled", "pytorch"])
def test_no_levels_is_rejected(backend):
    # L = 0 (an empty list of feature maps): one clear error from validation on every backend.
    value = torch.zeros(2, 0, 4, 8)
    shapes = torch.zeros(0, 2, dtype=torch.long)
    starts = torch.zeros(0, dtype=torch.long)
    locations = torch.rand(2, 5, 4, 0, 3, 2)
    weights = torch.rand(2, 5, 4, 0, 3)
    with pytest.raises(
        ValueError, match=r"expected at least one level, got spatial_shapes of shape \[0, 2\]"
    ):
        ms_deform_attn(value, shapes, starts, locations, weights, backend=backend)
