"""detr_ext.ops.gather_probe: the corners the probe walks are the forward's, here on the CPU
(the probe itself runs on a GPU: tools/gpu_check.py probe)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from detr_ext.ops import ms_deform_attn_pytorch
from detr_ext.ops.gather_probe import (
    PROBE_ROWS,
    PROBE_VARIANTS,
    corner_byte_offsets,
    group_of_slot,
    probe_expected,
)


def _problem(seed=0, batch=2, queries=7, heads=3, channels=4, points=2):
    generator = torch.Generator().manual_seed(seed)
    shapes = torch.tensor([[4, 5], [2, 3], [1, 1]])
    starts = torch.cat([shapes.new_zeros(1), shapes.prod(1).cumsum(0)[:-1]])
    n = int(shapes.prod(1).sum())
    value = torch.randn(batch, n, heads, channels, generator=generator, dtype=torch.float64)
    loc_shape = (batch, queries, heads, len(shapes), points, 2)
    # Some points outside the map on every side, some corners of inside points outside too.
    loc = torch.rand(loc_shape, generator=generator, dtype=torch.float64) * 1.4 - 0.2
    weights = torch.rand(loc_shape[:-1], generator=generator, dtype=torch.float64)
    return value, shapes, starts, loc, weights


def _sample_from_offsets(value_bytes, offsets, loc, shapes, weights, channels):
    """The forward from byte offsets: sum over points of weight * bilinear corners."""
    batch, queries, heads, levels, points, _ = loc.shape
    words = value_bytes.view(torch.float64)
    size = shapes.flip(-1).double().view(levels, 1, 2)  # (W, H) per level
    pixel = loc * size - 0.5
    frac = pixel - pixel.floor()
    fx, fy = frac[..., 0], frac[..., 1]
    bilinear = torch.stack([(1 - fx) * (1 - fy), fx * (1 - fy), (1 - fx) * fy, fx * fy], -1)
    coef = (bilinear * weights[..., None]).reshape(batch * queries * heads, levels * points, 4)
    present = offsets >= 0
    index = torch.where(present, offsets, torch.zeros_like(offsets)).long() // 8
    corners = words[index[..., None] + torch.arange(channels)] * present[..., None]
    out = (corners * coef[..., None]).sum(dim=(1, 2))  # [B * Q * H, C]
    return out.view(batch, queries, heads * channels)


@pytest.mark.parametrize("layout", ["token", "head"])
def test_corner_offsets_give_the_forward_of_the_pytorch_path(layout):
    value, shapes, starts, loc, weights = _problem()
    batch, n, heads, channels = value.shape
    data = value if layout == "token" else value.permute(0, 2, 1, 3).contiguous()
    offsets = corner_byte_offsets(loc, shapes, starts, n, channels * 8, layout)
    assert offsets.dtype == torch.int32 and offsets.shape == (batch * 7 * heads, 3 * 2, 4)
    assert (offsets == -1).any() and (offsets >= 0).any()  # both kinds of corner occur
    got = _sample_from_offsets(
        data.reshape(-1).view(torch.uint8), offsets, loc, shapes, weights, channels
    )
    expected = ms_deform_attn_pytorch(value, shapes, loc, weights)
    torch.testing.assert_close(got, expected)


def test_corner_offsets_name_what_is_wrong():
    value, shapes, starts, loc, _ = _problem()
    with pytest.raises(ValueError, match=r"locations must be \[B, Q, H, L, P, 2\], got"):
        corner_byte_offsets(loc[..., 0], shapes, starts, value.shape[1], 32)
    with pytest.raises(ValueError, match="layout must be 'token' or 'head', got 'nhwc'"):
        corner_byte_offsets(loc, shapes, starts, value.shape[1], 32, "nhwc")
    with pytest.raises(ValueError, match=r"spatial_shapes \[3, 2\] .* got \(2, 2\)"):
        corner_byte_offsets(loc, shapes[:2], starts, value.shape[1], 32)
    with pytest.raises(ValueError, match="do not fit int32 offsets"):
        corner_byte_offsets(loc, shapes, starts, 2**28, 32)


@pytest.mark.parametrize("tile", [1, 3, 4, 64])
def test_group_of_slot_is_a_bijection_in_runs_of_one_head(tile):
    batch, queries, heads = 2, 10, 3
    groups = group_of_slot(batch, queries, heads, tile)
    assert torch.equal(groups.sort().values, torch.arange(batch * queries * heads))
    b, q, h = groups // (queries * heads), groups // heads % queries, groups % heads
    # Slots run over b, then tiles of T queries, then heads, then the tile's queries.
    assert (b.diff() >= 0).all()
    first_tile = slice(0, min(tile, queries) * heads)
    heads_in_tile = h[first_tile].view(heads, -1)
    assert torch.equal(heads_in_tile, torch.arange(heads)[:, None].expand_as(heads_in_tile))
    assert torch.equal(q[first_tile].view(heads, -1)[0], torch.arange(min(tile, queries)))
    if tile == 1:
        assert torch.equal(groups, torch.arange(batch * queries * heads))
    with pytest.raises(ValueError, match="tile must be >= 1, got 0"):
        group_of_slot(batch, queries, heads, 0)


def test_probe_expected_sums_each_threads_words_over_present_corners():
    data = torch.arange(64, dtype=torch.float32)  # 256 bytes: two 128-byte corners
    offsets = torch.tensor([[[0, 128, -1, -1]], [[-1, -1, -1, 128]]], dtype=torch.int32)
    got = probe_expected(data, offsets, 128)
    assert got.shape == (2, 32)
    torch.testing.assert_close(got[0], (torch.arange(32) + torch.arange(32, 64)).double())
    torch.testing.assert_close(got[1], torch.arange(32, 64).double())
    # 64-byte corners: 16 words each.
    got = probe_expected(data, torch.tensor([[[64, -1, -1, 0]]], dtype=torch.int32), 64)
    torch.testing.assert_close(got[0], (torch.arange(16, 32) + torch.arange(16)).double())


def test_probe_rows_name_known_variants():
    for what, kind, layout, tile, corners, variant in PROBE_ROWS:
        assert what in ("op", "gather") and layout in ("token", "head") and tile >= 1
        if what == "op":
            assert kind in ("float32", "float16") and corners in ("realistic", "centre")
            assert variant == "-"
        else:
            assert kind in (128, 64) and corners in ("realistic", "resident", "none")
            assert variant in PROBE_VARIANTS
    # The variants' names are the ones tools/gather_probe.cu dispatches on.
    source = (Path(__file__).resolve().parents[2] / "tools" / "gather_probe.cu").read_text()
    for variant in PROBE_VARIANTS:
        assert f'variant == "{variant}"' in source
