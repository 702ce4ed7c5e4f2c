"""How much of the MSDA forward is its gathers (``tools/gpu_check.py probe``).

The forward kernel's time against the DRAM floor (``benchmark_kernels``) counts each byte of
value once; the kernel reads each bilinear corner of each point through L1 and L2 instead. The
probe (``tools/gather_probe.cu``) walks the very corners the forward walks, with its work mapping
and group order, and does nothing else: no locations, weights, level table, corner arithmetic or
conversions. Its time is what the memory system takes for those gathers alone, so that the op's
time can be split into the gathers' share and the op's own. Variants of the corners say what
would change it:

- ``corner_bytes``: 128 (32 float32 channels of a head, the op's float32 forward) or 64 (32
  float16 / bfloat16 channels);
- ``layout``: ``token``, the op's value layout ``[B, N, H, C]`` (a corner's row neighbours are
  ``H * C`` elements apart), or ``head``, ``[B, H, N, C]`` (a head's neighbouring positions are
  adjacent, so that two 64-byte corners of neighbouring x share a 128-byte line);
- ``order``: the query tile T of the kernels' group order (``DETR_EXT_MSDA_QUERY_TILE``);
- ``resident``: every corner moved into the first ``64 * corner_bytes`` bytes of the data, all L1
  hits: the gathers' instruction cost with no L2 or DRAM behind it;
- ``none``: no corner read at all: the probe's staging, loop and store alone;
- the probe kernel's ``variant`` (``PROBE_VARIANTS``): as the op's forward, or changed in how it
  loads (see ``PROBE_ROWS``).

The corner arithmetic here is the kernel's (``read_point`` in
``csrc/cuda/ms_deform_attn_device.cuh``): ``px = x * W - 0.5``, corners ``floor(px) + {0, 1}``,
a corner outside its level (or past the value rows) not read. The tests check it against the
PyTorch path on the CPU. Torch only, like the rest of :mod:`detr_ext.ops`.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .benchmark import poison_cuda_allocator
from .benchmark_kernels import kernel_inputs, set_tile
from .gpu_timing import graph_seconds, nbytes

__all__ = [
    "PROBE_ROWS",
    "PROBE_VARIANTS",
    "build_probe",
    "corner_byte_offsets",
    "group_of_slot",
    "probe_expected",
    "probe_markdown",
    "profile_launches",
    "run_probe",
]

_INT32_MAX = 2**31 - 1

# (what, dtype / corner bytes, layout, order T, corners, probe variant): the probe step's rows.
# "op" rows time the compiled forward (torch.ops.detr_ext.ms_deform_attn) on the realistic
# locations ("realistic") or with every point at the centre of its level ("centre": all L1
# hits, the op's own work with the memory system out of the way); "gather" rows time the probe:
# "plain" as the op's forward (four loads in flight, 5 blocks per SM, padded staging).
# Measured on 2026-12-04 and no longer timed by default: "two_points" (eight loads in flight,
# 1-2 % faster), "full_occupancy" (8 blocks per SM, 4 % slower), "conflicted" (the staging's
# former bank conflicts: the same time) and "prefetch" (the next tile's offsets loaded before the
# current tile's gathers: 2-4 % slower with the corners read, 4-9 % faster without them).
PROBE_ROWS = [
    ("op", "float32", "token", 1, "realistic", "-"),
    ("op", "float32", "token", 64, "realistic", "-"),
    ("op", "float16", "token", 1, "realistic", "-"),
    ("op", "float16", "token", 64, "realistic", "-"),
    ("op", "float32", "token", 1, "centre", "-"),
    ("op", "float16", "token", 1, "centre", "-"),
    ("gather", 128, "token", 1, "realistic", "plain"),
    ("gather", 128, "token", 64, "realistic", "plain"),
    ("gather", 64, "token", 1, "realistic", "plain"),
    ("gather", 64, "token", 64, "realistic", "plain"),
    ("gather", 64, "head", 1, "realistic", "plain"),
    ("gather", 64, "head", 64, "realistic", "plain"),
    ("gather", 128, "token", 1, "resident", "plain"),
    ("gather", 64, "token", 1, "resident", "plain"),
    ("gather", 128, "token", 1, "none", "plain"),
    ("gather", 64, "token", 1, "none", "plain"),
]
PROBE_VARIANTS = ("plain", "two_points", "full_occupancy", "conflicted", "prefetch")


def group_of_slot(batch: int, queries: int, heads: int, tile: int) -> torch.Tensor:
    """``[B * Q * H]`` int64: the (b, q, h) group, as ``(b * Q + q) * H + h``, that the
    kernels' slot-th group of threads owns at query tile ``tile`` (``group_of_slot`` in
    ``csrc/cuda/ms_deform_attn_device.cuh``): T = 1 is the identity; T > 1 takes runs of T
    consecutive queries of one head, the last tile of a batch element possibly shorter."""
    if tile < 1:
        raise ValueError(f"tile must be >= 1, got {tile}")
    slot = torch.arange(batch * queries * heads)
    if tile == 1:
        return slot
    b = slot // (queries * heads)
    rest = slot - b * queries * heads
    span = tile * heads
    tile_index = rest // span
    first = tile_index * tile
    tile_queries = torch.clamp(queries - first, max=tile)
    within = rest - tile_index * span
    h = within // tile_queries
    q = first + within - h * tile_queries
    return (b * queries + q) * heads + h


def corner_byte_offsets(
    locations: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    num_values: int,
    corner_bytes: int,
    layout: str = "token",
) -> torch.Tensor:
    """int32 ``[B * Q * H, L * P, 4]``: the byte offset of each bilinear corner's
    ``corner_bytes`` bytes of one head in a value tensor of ``num_values`` rows, laid out
    ``[B, N, H, C]`` (``token``) or ``[B, H, N, C]`` (``head``); -1 for a corner that the forward
    does not read. Corners in the kernel's order: (x0, y0), (x0 + 1, y0), (x0, y0 + 1),
    (x0 + 1, y0 + 1). ``locations``: ``[B, Q, H, L, P, 2]``."""
    if locations.dim() != 6 or locations.shape[-1] != 2:
        raise ValueError(f"locations must be [B, Q, H, L, P, 2], got {tuple(locations.shape)}")
    if layout not in ("token", "head"):
        raise ValueError(f"layout must be 'token' or 'head', got {layout!r}")
    batch, queries, heads, levels, points, _ = locations.shape
    if spatial_shapes.shape != (levels, 2) or level_start_index.shape != (levels,):
        raise ValueError(
            f"spatial_shapes [{levels}, 2] and level_start_index [{levels}] expected for "
            f"{levels} levels, got {tuple(spatial_shapes.shape)} and "
            f"{tuple(level_start_index.shape)}"
        )
    total = batch * num_values * heads * corner_bytes
    if total > _INT32_MAX:
        raise ValueError(f"the value tensor's {total} bytes do not fit int32 offsets")
    device = locations.device
    shapes = spatial_shapes.to(device)
    height = shapes[:, 0].view(levels, 1)
    width = shapes[:, 1].view(levels, 1)
    start = level_start_index.to(device).view(levels, 1)
    loc = locations.float()
    px = loc[..., 0] * width.float() - 0.5  # [B, Q, H, L, P] (width broadcast over L, P)
    py = loc[..., 1] * height.float() - 0.5
    # As the kernel: no corner for a point outside [-1, W) x [-1, H) or non-finite.
    near = (px >= -1) & (px < width) & (py >= -1) & (py < height)
    x0 = torch.where(near, px, torch.zeros_like(px)).floor().long()
    y0 = torch.where(near, py, torch.zeros_like(py)).floor().long()
    corners = []
    for dy in (0, 1):
        for dx in (0, 1):
            x, y = x0 + dx, y0 + dy
            row = start + y * width + x
            inside = near & (x >= 0) & (x < width) & (y >= 0) & (y < height) & (row < num_values)
            corners.append((row, inside))
    b = torch.arange(batch, device=device).view(batch, 1, 1, 1, 1)
    h = torch.arange(heads, device=device).view(1, 1, heads, 1, 1)
    # Corner order of the kernel: k = dx + 2 * dy.
    result = []
    for row, inside in (corners[0], corners[1], corners[2], corners[3]):
        if layout == "token":
            element = (b * num_values + row) * heads + h
        else:
            element = (b * heads + h) * num_values + row
        result.append(torch.where(inside, element * corner_bytes, torch.full_like(row, -1)))
    offsets = torch.stack(result, -1)  # [B, Q, H, L, P, 4]
    return offsets.reshape(batch * queries * heads, levels * points, 4).to(torch.int32)


def probe_expected(data: torch.Tensor, offsets: torch.Tensor, corner_bytes: int) -> torch.Tensor:
    """What the probe computes, in float64: ``[groups, corner_bytes / 4]``, thread j's four
    float32 words summed over every present corner's bytes ``[16 j, 16 j + 16)``."""
    words = data.contiguous().view(-1).view(torch.uint8).view(torch.float32).double()
    per_corner = corner_bytes // 4
    present = offsets >= 0  # [G, P, 4]
    first = torch.where(present, offsets, torch.zeros_like(offsets)).long() // 4
    index = first[..., None] + torch.arange(per_corner, device=offsets.device)  # [G, P, 4, W]
    gathered = words[index] * present[..., None]
    return gathered.sum(dim=(1, 2))


def build_probe(source: Path, arch: str | None = None):
    """Compiles ``tools/gather_probe.cu`` (torch.utils.cpp_extension, cached between calls)."""
    from torch.utils.cpp_extension import load

    flags = ["-O3"]
    if arch:
        flags.append(f"-gencode=arch=compute_{arch},code=sm_{arch}")
    return load("detr_ext_gather_probe", [str(source)], extra_cuda_cflags=flags, verbose=False)


def _inputs(dtype: str, locations: str, seed: int):
    """The kernels step's encoder inputs at batch 2 (float32 coordinates); with ``centre``,
    every point moved to the centre of its level."""
    value, shapes, starts, loc, weights = kernel_inputs(
        "encoder", 2, dtype, "float32", "realistic", seed
    )
    if locations == "centre":
        loc = torch.full_like(loc, 0.5)
    return value, shapes, starts, loc, weights


def _probe_offsets(sets, corner_bytes: int, layout: str, tile: int, corners: str):
    offsets = []
    for value, shapes, starts, loc, _ in sets:
        batch, num_values, heads, _ = value.shape
        o = corner_byte_offsets(loc, shapes, starts, num_values, corner_bytes, layout)
        o = o[group_of_slot(batch, loc.shape[1], heads, tile).to(o.device)]
        if corners == "resident":
            o = torch.where(o >= 0, (o // corner_bytes) % 64 * corner_bytes, o)
        elif corners == "none":
            o = torch.full_like(o, -1)
        offsets.append(o.contiguous())
    return offsets


def _time_op(sets, tile: int, floor_bytes: int) -> tuple[dict, torch.Tensor]:
    """The compiled forward at query tile ``tile``: its time, and the corners it reads."""
    ops = torch.ops.detr_ext
    set_tile(tile)
    try:
        poison_cuda_allocator(4 * floor_bytes)
        out = ops.ms_deform_attn(*sets[0])
        torch.cuda.synchronize()
        seconds, method = graph_seconds(lambda i: ops.ms_deform_attn(*sets[i]), len(sets))
    finally:
        set_tile(None)
    value, shapes, starts, loc, _ = sets[0]
    offsets = corner_byte_offsets(loc, shapes, starts, value.shape[1], 32 * value.element_size())
    entry = {"seconds": seconds, "timing": method}
    entry["all_outputs_written"] = not bool(out.isnan().any())
    return entry, offsets


def _time_gather(module, sets, corner_bytes, layout, tile, corners, variant, check_groups):
    """The probe over the corners of ``sets``: its time, and its error to probe_expected."""
    offsets = _probe_offsets(sets, corner_bytes, layout, tile, corners)
    data = [s[0] for s in sets]
    out = module.gather_probe(data[0], offsets[0], corner_bytes, variant)
    expected = probe_expected(data[0], offsets[0][:check_groups], corner_bytes)
    scale = expected.abs().max().clamp(min=1.0)
    error = float((out[:check_groups].double() - expected).abs().max() / scale)
    seconds, method = graph_seconds(
        lambda i: module.gather_probe(data[i], offsets[i], corner_bytes, variant), len(sets)
    )
    return {"seconds": seconds, "timing": method, "max_error_to_expected": error}, offsets[0]


def run_probe(module, bandwidth: float, check_groups: int = 4096) -> list[dict]:
    """Times every ``PROBE_ROWS`` row (three input sets, CUDA-graph replay) and checks the
    probe's sums against :func:`probe_expected` on the first ``check_groups`` groups."""
    cache: dict = {}
    rows = []
    for what, kind, layout, tile, corners, variant in PROBE_ROWS:
        dtype = kind if what == "op" else ("float32" if kind == 128 else "float16")
        loc_kind = corners if what == "op" else "realistic"
        if (dtype, loc_kind) not in cache:
            cache[(dtype, loc_kind)] = [_inputs(dtype, loc_kind, seed) for seed in range(3)]
        sets = cache[(dtype, loc_kind)]
        value, _, _, loc, weights = sets[0]
        floor_bytes = nbytes(value, loc, weights) + nbytes(value)  # the output: value's size
        if what == "op":
            entry, offsets = _time_op(sets, tile, floor_bytes)
            corner_bytes = 32 * value.element_size()
        else:
            corner_bytes = kind
            entry, offsets = _time_gather(
                module, sets, corner_bytes, layout, tile, corners, variant, check_groups
            )
        read = int((offsets >= 0).sum()) * corner_bytes
        seconds = entry["seconds"]
        entry.update(
            what=what,
            dtype=dtype,
            layout=layout,
            query_tile=tile,
            corners=corners,
            variant=variant,
            corner_bytes=corner_bytes,
            corner_bytes_read=read,
            corner_read_rate=read / seconds,
            floor_bytes=floor_bytes,
            over_floor=seconds * bandwidth / floor_bytes,
        )
        rows.append(entry)
        error = entry.get("max_error_to_expected")
        print(
            f"{what:<6} {dtype:<8} {layout:<5} T={tile:<3} {corners:<9} {variant:<14} "
            f"{seconds * 1e6:8.1f} us ({entry['over_floor']:5.2f}x floor)  corners "
            f"{read / 1e9:.2f} GB at {read / seconds / 1e12:5.1f} TB/s"
            + ("" if error is None else f"  error {error:.1e}"),
            flush=True,
        )
    return rows


def profile_launches(module) -> None:
    """One launch each of the rows ncu compares: the float32 and float16 forward at T = 1 and
    64 and the probe over the same corners (``-k regex:"gather_probe|ms_deform_attn_forward"``)."""
    for dtype, corner_bytes in (("float32", 128), ("float16", 64)):
        sets = [_inputs(dtype, "realistic", 0)]
        for tile in (1, 64):
            set_tile(tile)
            torch.ops.detr_ext.ms_deform_attn(*sets[0])
            set_tile(None)
            offsets = _probe_offsets(sets, corner_bytes, "token", tile, "realistic")
            module.gather_probe(sets[0][0], offsets[0], corner_bytes, "plain")
    offsets = _probe_offsets(sets, 64, "head", 1, "realistic")
    module.gather_probe(sets[0][0], offsets[0], 64, "plain")
    torch.cuda.synchronize()


def probe_markdown(result: dict) -> str:
    """The markdown table of ``tools/gpu_check.py probe``'s JSON."""
    env = result["environment"]
    lines = [
        f"MSDA forward against its gathers alone (`tools/gather_probe.cu`) on "
        f"{env['device_name']}, torch {env['torch']}, commit {env['commit']}. Encoder preset, "
        f"batch 2. Copy bandwidth {result['bandwidth_bytes_per_s'] / 1e12:.2f} TB/s; floor = "
        "the op's fewest bytes in that dtype / bandwidth; corners = bytes of the corners read "
        "(each corner of each point once, as the kernels read them).",
        "",
        "| what | dtype | layout | T | corners | variant | us | x floor | corners GB | TB/s |",
        "| --- | --- | --- | --: | --- | --- | --: | --: | --: | --: |",
    ]
    for r in result["results"]:
        lines.append(
            f"| {r['what']} | {r['dtype']} | {r['layout']} | {r['query_tile']} | {r['corners']} "
            f"| {r['variant']} | {r['seconds'] * 1e6:.1f} | {r['over_floor']:.2f} "
            f"| {r['corner_bytes_read'] / 1e9:.2f} | {r['corner_read_rate'] / 1e12:.1f} |"
        )
    return "\n".join(lines) + "\n"
