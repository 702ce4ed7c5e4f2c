"""The CUDA kernels against the reference path (float64 oracle). Needs a GPU.

Before every run of the kernels the caching allocator's free memory is filled with NaN
(``poison_cuda_allocator``), so an output element the kernels do not write fails the
comparison instead of passing as a plausible zero. ``tools/gpu_check.sh`` runs these on a GPU
machine, with the benchmarks.
"""

from __future__ import annotations

import pytest
import torch

from detr_ext.ops import build_info, ms_deform_attn
from detr_ext.ops.benchmark import DTYPES, PRESETS, poison_cuda_allocator
from detr_ext.ops.benchmark import make_inputs as make_preset_inputs
from detr_ext.ops.benchmark_kernels import LEAN_ENV
from detr_ext.ops.benchmark_kernels import TILE_ENV as QUERY_TILE_ENV
from detr_ext.ops.benchmark_steps import TOLERANCES, output_difference
from tests.ops.msda_cases import (
    CASES,
    NON_FINITE_INPUTS,
    Case,
    check_non_finite_parity,
    forward_and_grads,
    make_inputs,
    max_relative_error,
    near_pixel_edges,
    non_finite_inputs,
)

pytestmark = pytest.mark.cuda

# Relative error bound against the float64 reference for output and each gradient.
TOLERANCE = {
    torch.float64: 1e-10,
    torch.float32: 1e-4,
    torch.float16: 1e-2,
    torch.bfloat16: 4e-2,
}
ENCODER = Case(1, 22223, 8, 32, ((100, 167), (50, 84), (25, 42), (13, 21)), 4, "mixed")


REDUCED = (torch.float16, torch.bfloat16)


def _upcast(inputs, device="cpu"):
    """The float64 reference's inputs: the very values the kernels get (rounded to their
    dtypes), so that only the kernels' arithmetic is compared."""
    return tuple(
        t.to(device, torch.float64) if t.is_floating_point() else t.to(device) for t in inputs
    )


def _check_against(inputs, reference, dtype: torch.dtype) -> None:
    """Runs the kernels on ``inputs`` (allocator poisoned first) and compares output and
    gradients with ``reference`` (``forward_and_grads`` of ``_upcast(inputs)``)."""
    poison_cuda_allocator(2**32 if inputs[0].numel() > 2**22 else 2**28)
    actual = forward_and_grads(inputs, "compiled", grad_output=reference[-1].to(inputs[0].device))
    assert actual[0].dtype == dtype
    # The location gradient jumps where a sampling position crosses a pixel centre; float32
    # rounding of the position decides the side there (see near_pixel_edges).
    edges = near_pixel_edges(inputs[3], inputs[1])
    for name, got, want in zip(
        ("output", "grad_value", "grad_locations", "grad_weights"), actual[:4], reference[:4]
    ):
        want = want.to(got.device)
        if name == "grad_locations":
            got, want = got.masked_fill(edges, 0), want.masked_fill(edges, 0)
        error = max_relative_error(got, want)
        # Location gradients of reduced-precision values inherit the value rounding twice.
        bound = TOLERANCE[dtype] * (2 if name == "grad_locations" else 1)
        assert error < bound, f"{name}: relative error {error:.2e} >= {bound:.0e}"


def _check(case: Case, dtype: torch.dtype):
    coord_dtype = torch.float32 if dtype in REDUCED else dtype
    inputs = make_inputs(case, dtype, device="cuda", coord_dtype=coord_dtype)
    reference = forward_and_grads(_upcast(inputs), "pytorch")
    _check_against(inputs, reference, dtype)


def test_poisoned_allocator_hands_out_nan():
    poison_cuda_allocator(2**24)
    large = torch.empty(2**20, device="cuda")
    small = torch.empty(77, device="cuda", dtype=torch.bfloat16)
    assert large.isnan().all() and small.isnan().all()


def test_cuda_kernels_registered():
    assert "cuda" in build_info()["kernels"]
    assert torch._C._dispatch_has_kernel_for_dispatch_key("detr_ext::ms_deform_attn", "CUDA")


@pytest.mark.parametrize("dtype", list(TOLERANCE), ids=str)
@pytest.mark.parametrize("case", CASES, ids=str)
def test_cuda_parity(case, dtype):
    # The cases' C reach every kernel: 16-byte packs where they divide C (2 float64, 4 float32
    # or 8 half-precision values; the float32 / half-precision forward gathers them through byte
    # offsets), the half-precision backward's packs of 4 where C % 4 == 0 (C = 4, 8, 16, 32,
    # 64), element-wise kernels for the other C (in float32: 1, 3, 7, 30, 71, 257).
    _check(case, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_cuda_encoder_sized_case(dtype):
    _check(ENCODER, dtype)


@pytest.mark.parametrize("tile", [3, 32])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", CASES, ids=str)
def test_cuda_parity_in_every_group_order(case, dtype, tile, monkeypatch):
    # Runs of `tile` queries of one head per thread group (short last runs when Q % tile != 0).
    monkeypatch.setenv(QUERY_TILE_ENV, str(tile))
    _check(case, dtype)


@pytest.mark.parametrize("coords", ["float32", "value dtype"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_cuda_half_backward_in_two_chunks(dtype, coords):
    # C = 136: 34 packs of 4, so 32 threads per (b, q, h) and a second chunk of channels.
    case = Case(2, 9, 2, 136, ((5, 6), (2, 3)), 3, "mixed")
    inputs = make_inputs(
        case, dtype, device="cuda", coord_dtype=torch.float32 if coords == "float32" else dtype
    )
    reference = forward_and_grads(_upcast(inputs), "pytorch")
    _check_against(inputs, reference, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", CASES, ids=str)
def test_cuda_parity_of_the_element_offset_forward(case, dtype, monkeypatch):
    # DETR_EXT_MSDA_FORWARD_LEAN=0: the 16-byte packs (C % 4 == 0 in float32, C % 8 == 0 in half
    # precision) gathered through element offsets, as inputs past 2^31 bytes always are; the
    # other C take the element-wise kernel either way.
    monkeypatch.setenv(LEAN_ENV, "0")
    _check(case, dtype)


@pytest.mark.parametrize("lean", [None, "0"], ids=["byte offsets", "element offsets"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_cuda_forward_gathers_in_two_chunks(dtype, lean, monkeypatch):
    # More 16-byte packs than 32 threads: C = 160 float32 (40 packs) or 272 half-precision
    # values (34 packs) make a second chunk of channels, with its own base pointer.
    if lean is not None:
        monkeypatch.setenv(LEAN_ENV, lean)
    channels = 160 if dtype == torch.float32 else 272
    case = Case(2, 9, 2, channels, ((5, 6), (2, 3)), 3, "mixed")
    inputs = make_inputs(case, dtype, device="cuda", coord_dtype=torch.float32)
    reference = forward_and_grads(_upcast(inputs), "pytorch")
    _check_against(inputs, reference, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_cuda_forward_gathers_are_the_same_bit_for_bit(dtype, monkeypatch):
    """The byte-offset gather (the default) and the element-offset one
    (``DETR_EXT_MSDA_FORWARD_LEAN=0``) add the same products in the same order: the encoder
    preset's output is identical, and so is that of a case with a short last tile of points, one
    whose missing corners are many (points outside the maps) and one of two chunks of
    channels."""
    channels = 160 if dtype == torch.float32 else 272
    cases = (
        make_preset_inputs(PRESETS["encoder"], 2, dtype, "cuda", "realistic"),
        make_inputs(Case(2, 33, 3, 64, ((9, 7), (4, 5), (2, 2)), 3, "mixed"), dtype,
                    device="cuda", coord_dtype=torch.float32),
        make_inputs(Case(2, 9, 3, 64, ((5, 7), (1, 1), (3, 3)), 8, "outside"), dtype,
                    device="cuda", coord_dtype=torch.float32),
        make_inputs(Case(2, 9, 2, channels, ((5, 6), (2, 3)), 3, "mixed"), dtype,
                    device="cuda", coord_dtype=torch.float32),
    )  # fmt: skip
    for inputs in cases:
        monkeypatch.delenv(LEAN_ENV, raising=False)
        expected = torch.ops.detr_ext.ms_deform_attn(*inputs)
        monkeypatch.setenv(LEAN_ENV, "0")
        poison_cuda_allocator(2**28)
        assert torch.equal(torch.ops.detr_ext.ms_deform_attn(*inputs), expected)


@pytest.mark.parametrize("text", ["yes", "2", "-1"])
def test_cuda_bad_forward_gather_is_a_clear_error(text, monkeypatch):
    monkeypatch.setenv(LEAN_ENV, text)
    inputs = make_inputs(CASES[3], torch.float32, device="cuda")
    with pytest.raises(RuntimeError, match=f"{LEAN_ENV}: expected 0 or 1, got '{text}'"):
        ms_deform_attn(*inputs, backend="compiled")


@pytest.mark.parametrize("text", ["0", "-2", "abc", "4097", "3x"])
def test_cuda_bad_query_tile_is_a_clear_error(text, monkeypatch):
    monkeypatch.setenv(QUERY_TILE_ENV, text)
    inputs = make_inputs(CASES[3], torch.float32, device="cuda")
    with pytest.raises(RuntimeError, match=f"{QUERY_TILE_ENV}: expected an integer from 1 to"):
        ms_deform_attn(*inputs, backend="compiled")


PRESET_CASES = [
    (preset, batch, dtype)
    for preset in ("encoder", "decoder")
    for batch in (1, 2, 8)
    for dtype in ("float64", "float32", "float16", "bfloat16")
]


@pytest.mark.parametrize(("preset", "batch", "dtype"), PRESET_CASES)
def test_cuda_parity_on_the_benchmark_presets(preset, batch, dtype):
    # Realistic locations; the float64 reference runs on the GPU (the encoder at batch 8 is
    # slow on a CPU).
    inputs = make_preset_inputs(PRESETS[preset], batch, DTYPES[dtype], "cuda", "realistic")
    reference = forward_and_grads(_upcast(inputs, "cuda"), "pytorch")
    _check_against(inputs, reference, DTYPES[dtype])


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_cuda_benchmark_backends_agree(dtype):
    # The benchmark refuses to time rows whose two backends disagree; with the baseline's
    # grid_sample in bfloat16 (locations rounded) the encoder's differed by 0.7.
    difference = output_difference(PRESETS["encoder"], 1, dtype, "cuda", "realistic")
    assert difference <= TOLERANCES[dtype]


def test_cuda_torch_compile_matches_eager():
    value, shapes, starts, locations, weights = make_inputs(CASES[3], torch.float32, device="cuda")

    def attend(value, locations, weights):
        return ms_deform_attn(value, shapes, starts, locations, weights, backend="compiled")

    results = []
    for function in (attend, torch.compile(attend, fullgraph=True)):
        inputs = [t.detach().clone().requires_grad_() for t in (value, locations, weights)]
        output = function(*inputs)
        output.square().sum().backward()
        results.append([output.detach()] + [t.grad for t in inputs])
    for eager, compiled in zip(*results):
        assert max_relative_error(compiled, eager) < 1e-6


def test_cuda_gradcheck_float64():
    case = Case(2, 3, 2, 5, ((3, 4), (2, 2), (1, 1)), 2, "mixed")
    value, shapes, starts, locations, weights = make_inputs(case, device="cuda", seed=3)
    locations = (locations * 0.9 + 0.031).requires_grad_(True)
    value.requires_grad_(True)
    weights.requires_grad_(True)

    def op(value, locations, weights):
        return ms_deform_attn(value, shapes, starts, locations, weights, backend="compiled")

    assert torch.autograd.gradcheck(op, (value, locations, weights), eps=1e-6, atol=1e-7)


def test_cuda_autocast_runs_in_autocast_dtype():
    value, shapes, starts, locations, weights = make_inputs(CASES[3], torch.float32, device="cuda")
    with torch.autocast("cuda", dtype=torch.float16):
        out = ms_deform_attn(value, shapes, starts, locations, weights)
    assert out.dtype == torch.float16
    expected = ms_deform_attn(value, shapes, starts, locations, weights)
    assert max_relative_error(out, expected) < 1e-2


@pytest.mark.parametrize("backend", ["compiled", "pytorch"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("name", list(NON_FINITE_INPUTS))
def test_cuda_non_finite_parity(name, dtype, backend):
    # The CPU float64 PyTorch path is the oracle; on CUDA both the kernels and the PyTorch path
    # (whose grid_sample alone would sample zeros at +-inf) must follow the same rule.
    if backend == "pytorch" and dtype == torch.bfloat16:
        pytest.skip("the PyTorch path casts locations to bfloat16: different sampling points")
    reference = forward_and_grads(non_finite_inputs(name, torch.float64), "pytorch")
    coord_dtype = torch.float32 if dtype == torch.bfloat16 else dtype
    inputs = non_finite_inputs(name, dtype, device="cuda", coord_dtype=coord_dtype)
    actual = forward_and_grads(inputs, backend, grad_output=reference[-1].cuda())
    check_non_finite_parity(name, actual, reference, TOLERANCE[dtype] * 2)
