"""Random MSDA problems shared by the CPU and CUDA test suites."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from detr_ext.ops import ms_deform_attn, ms_deform_attn_pytorch


@dataclass(frozen=True)
class Case:
    batch: int
    queries: int
    heads: int
    channels: int
    shapes: tuple[tuple[int, int], ...]
    points: int
    locations: str = "mixed"  # "inside", "edges", "outside" or "mixed"

    def __str__(self) -> str:
        shapes = "x".join(f"{h}.{w}" for h, w in self.shapes)
        return (
            f"B{self.batch}-Q{self.queries}-H{self.heads}-C{self.channels}-L[{shapes}]"
            f"-P{self.points}-{self.locations}"
        )


# Channels 1..257, heads 1-8, levels 1-5 (with 1x1 maps), points 1-8, queries 0/1/thousands,
# batch 1-3, locations inside, on the 0/1 edges, and outside [0, 1].
CASES = [
    Case(1, 7, 1, 1, ((4, 5),), 1, "inside"),
    Case(2, 5, 2, 3, ((1, 1),), 2, "mixed"),
    Case(3, 1, 8, 30, ((6, 3), (3, 2)), 4, "edges"),
    Case(1, 11, 4, 32, ((8, 8), (4, 4), (2, 2), (1, 1)), 4, "mixed"),
    Case(2, 9, 3, 64, ((5, 7), (1, 1), (3, 3)), 8, "outside"),
    Case(1, 6, 2, 71, ((7, 2), (2, 7), (1, 3), (3, 1), (1, 1)), 3, "mixed"),
    Case(2, 3, 1, 257, ((3, 4), (2, 2)), 5, "edges"),
    Case(1, 0, 8, 32, ((4, 4), (2, 2)), 4, "mixed"),
    Case(2, 2048, 8, 8, ((16, 24), (8, 12), (4, 6), (2, 3)), 4, "mixed"),
    Case(3, 64, 5, 16, ((9, 1), (1, 9)), 6, "inside"),
    Case(1, 3000, 2, 4, ((32, 40), (16, 20), (8, 10)), 2, "mixed"),
    Case(2, 33, 6, 7, ((2, 2), (1, 1), (3, 5), (6, 6)), 7, "mixed"),
]


def level_start_index_of(spatial_shapes: torch.Tensor) -> torch.Tensor:
    sizes = spatial_shapes.prod(1)
    return torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])


def sampling_locations_for(case: Case, generator: torch.Generator) -> torch.Tensor:
    """``[B, Q, H, L, P, 2]`` locations of the case's kind, in float64."""
    size = (case.batch, case.queries, case.heads, len(case.shapes), case.points, 2)
    inside = torch.rand(size, generator=generator, dtype=torch.float64)
    if case.locations == "inside":
        return inside
    edges = torch.randint(0, 2, size, generator=generator).double()  # exactly 0 or 1
    outside = torch.rand(size, generator=generator, dtype=torch.float64) * 1.6 - 0.3
    if case.locations == "edges":
        return torch.where(torch.rand(size, generator=generator) < 0.5, edges, inside)
    if case.locations == "outside":
        return outside
    choice = torch.randint(0, 3, size, generator=generator)
    return torch.where(choice == 0, inside, torch.where(choice == 1, edges, outside))


def make_inputs(case: Case, dtype=torch.float64, device="cpu", seed: int = 0, coord_dtype=None):
    """Returns (value, spatial_shapes, level_start_index, locations, weights)."""
    generator = torch.Generator().manual_seed(seed)
    spatial_shapes = torch.tensor(case.shapes, dtype=torch.long)
    num_values = int(spatial_shapes.prod(1).sum())
    value = torch.randn(
        case.batch, num_values, case.heads, case.channels, generator=generator, dtype=torch.float64
    )
    locations = sampling_locations_for(case, generator)
    weights = torch.rand(
        case.batch,
        case.queries,
        case.heads,
        len(case.shapes),
        case.points,
        generator=generator,
        dtype=torch.float64,
    )
    weights = weights / weights.flatten(-2).sum(-1).clamp_min(1e-6)[..., None, None]
    coord_dtype = coord_dtype or dtype
    return (
        value.to(device, dtype),
        spatial_shapes.to(device),
        level_start_index_of(spatial_shapes).to(device),
        locations.to(device, coord_dtype),
        weights.to(device, coord_dtype),
    )


def forward_and_grads(inputs, backend: str, grad_output: torch.Tensor | None = None):
    """Output and the gradients of value, locations and weights for ``sum(out * grad_output)``."""
    value, spatial_shapes, level_start_index, locations, weights = (
        t.detach().clone() for t in inputs
    )
    for tensor in (value, locations, weights):
        tensor.requires_grad_(True)
    if backend == "pytorch":
        output = ms_deform_attn_pytorch(value, spatial_shapes, locations, weights)
    else:
        output = ms_deform_attn(
            value, spatial_shapes, level_start_index, locations, weights, backend=backend
        )
    if grad_output is None:
        generator = torch.Generator().manual_seed(1)
        grad_output = torch.randn(output.shape, generator=generator, dtype=torch.float64)
    (output * grad_output.to(output)).sum().backward()
    return output.detach(), value.grad, locations.grad, weights.grad, grad_output


def near_pixel_edges(
    locations: torch.Tensor, spatial_shapes: torch.Tensor, margin: float = 1e-3
) -> torch.Tensor:
    """``[B, Q, H, L, P, 2]`` mask of the coordinates whose pixel position (``x * W - 0.5``,
    ``y * H - 0.5``) lies within ``margin`` of an integer. There the bilinear weights'
    derivative jumps, so a location gradient computed in float32 (whose rounding of the
    position can cross the integer) and one computed in float64 may differ by O(1): with
    millions of points (the encoder preset) some always do."""
    sizes = spatial_shapes.flip(-1).to(locations.device, torch.float64)  # [L, 2]: (W, H)
    pixel = locations.double() * sizes[:, None, :] - 0.5
    return (pixel - pixel.round()).abs() < margin


def max_relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """``max|a - e| / max(max|e|, 1e-12)`` in float64."""
    if expected.numel() == 0:
        return 0.0
    actual, expected = actual.double(), expected.double()
    return float((actual - expected).abs().max() / expected.abs().max().clamp_min(1e-12))


# ------------------------------------------------------------------ non-finite inputs
@dataclass(frozen=True)
class NonFinite:
    """One entry of one sampling point made non-finite (rule: ms_deform_attn's docstring)."""

    location: tuple[float, float] | None  # (x, y) of the point, None: keep the random one
    weight: float | None  # attention weight of the point, None: keep the random one
    grad_value_nan: bool = False  # whether NaN reaches grad_value (in-map corners, bad weight)


# NON_FINITE_POINT indexes [B, Q, H, L, P] of NON_FINITE_CASE. Its level 0 is 4x4, so 0.375 and
# 0.875 are exact pixel centres there (in-map corners with bilinear weight 0).
NON_FINITE_CASE = Case(2, 4, 2, 5, ((4, 4), (2, 3)), 3, "inside")
NON_FINITE_POINT = (1, 2, 1, 0, 1)
NAN, INF = float("nan"), float("inf")
NON_FINITE_INPUTS = {
    "x=nan": NonFinite((NAN, 0.4), None),
    "y=nan": NonFinite((0.4, NAN), None),
    "x=+inf": NonFinite((INF, 0.4), None),
    "x=-inf": NonFinite((-INF, 0.4), None),
    "y=+inf": NonFinite((0.4, INF), None),
    "y=-inf": NonFinite((0.4, -INF), None),
    "x=nan,y=-inf": NonFinite((NAN, -INF), None),
    "x=nan,y=far": NonFinite((NAN, 7.0), None),
    "x=+inf,y=far": NonFinite((INF, -7.0), None),
    "weight=nan": NonFinite(None, NAN, grad_value_nan=True),
    "weight=+inf": NonFinite(None, INF, grad_value_nan=True),
    "weight=-inf": NonFinite(None, -INF, grad_value_nan=True),
    "weight=+inf,pixel-centre": NonFinite((0.375, 0.875), INF, grad_value_nan=True),
    "weight=+inf,half-outside": NonFinite((0.98, 0.375), INF, grad_value_nan=True),
    "weight=-inf,outside": NonFinite((1.7, 0.4), -INF),
}


def non_finite_inputs(name: str, dtype=torch.float64, device="cpu", coord_dtype=None):
    """``make_inputs(NON_FINITE_CASE)`` with the entries of ``NON_FINITE_INPUTS[name]`` set."""
    spec = NON_FINITE_INPUTS[name]
    value, shapes, starts, locations, weights = make_inputs(NON_FINITE_CASE, torch.float64)
    if spec.location is not None:
        locations[NON_FINITE_POINT] = torch.tensor(spec.location, dtype=torch.float64)
    if spec.weight is not None:
        weights[NON_FINITE_POINT] = spec.weight
    coord_dtype = coord_dtype or dtype
    return (
        value.to(device, dtype),
        shapes.to(device),
        starts.to(device),
        locations.to(device, coord_dtype),
        weights.to(device, coord_dtype),
    )


def _rule_nan_masks(name: str, output_shape, value_shape, locations_shape) -> dict:
    """Where the rule puts NaN; for grad_value the rows NaN may reach (the point's head)."""
    spec = NON_FINITE_INPUTS[name]
    batch, query, head, _, _ = NON_FINITE_POINT
    channels = value_shape[-1]
    output = torch.zeros(output_shape, dtype=torch.bool)
    output[batch, query, head * channels : (head + 1) * channels] = True
    grad_value = torch.zeros(value_shape, dtype=torch.bool)
    grad_value[batch, :, head] = spec.grad_value_nan
    grad_locations = torch.zeros(locations_shape, dtype=torch.bool)
    grad_locations[NON_FINITE_POINT] = True
    grad_weights = torch.zeros(locations_shape[:-1], dtype=torch.bool)
    grad_weights[NON_FINITE_POINT] = spec.weight is None  # a bad location, not a bad weight
    return {
        "output": output,
        "grad_value": grad_value,
        "grad_locations": grad_locations,
        "grad_weights": grad_weights,
    }


def check_non_finite_parity(name: str, actual, expected, tolerance: float) -> None:
    """``actual`` and ``expected`` (``forward_and_grads`` results) follow the non-finite rule.

    Both are NaN at the same positions, which are the ones the rule names (for grad_value: some
    rows of the point's head, or none), nothing is infinite, and elsewhere they agree within
    ``tolerance`` relative to the largest expected magnitude.
    """
    masks = _rule_nan_masks(name, actual[0].shape, actual[1].shape, actual[2].shape)
    for what, got, want in zip(masks, actual[:4], expected[:4]):
        got, want = got.detach().cpu().double(), want.detach().cpu().double()
        assert not (got.isinf().any() or want.isinf().any()), f"{name}: {what} is infinite"
        assert torch.equal(got.isnan(), want.isnan()), (
            f"{name}: {what} is NaN at {got.isnan().nonzero().tolist()}, the reference at "
            f"{want.isnan().nonzero().tolist()}"
        )
        if what == "grad_value":
            assert want.isnan().any() == NON_FINITE_INPUTS[name].grad_value_nan, f"{name}: {what}"
            assert not (want.isnan() & ~masks[what]).any(), f"{name}: {what} NaN in another head"
        else:
            assert torch.equal(want.isnan(), masks[what]), (
                f"{name}: {what} is NaN at {want.isnan().nonzero().tolist()}, the rule says "
                f"{masks[what].nonzero().tolist()}"
            )
        finite = ~want.isnan()
        assert max_relative_error(got[finite], want[finite]) < tolerance, f"{name}: {what}"
