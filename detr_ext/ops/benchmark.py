"""Inputs, timing and run facts of the MSDA benchmark (``tools/benchmark_msda.py``), importable
with torch alone: the problem presets of a DINO-R50 4-scale model at 800 x 1333 (its encoder:
one query per value position; its decoder: 900 queries), realistic or uniform sampling
locations, median timing (CUDA events on a GPU) and the environment a result records. Tests,
the GPU check and other benchmarks use the same inputs."""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..utils.run_info import cpu_name, git_commit
from ._extension import build_info

__all__ = [
    "DINO_4SCALE_800x1333",
    "DTYPES",
    "PRESETS",
    "Problem",
    "environment",
    "grid_sample_baseline",
    "interleaved_median_times",
    "make_inputs",
    "median_time",
    "poison_cuda_allocator",
    "reference_points",
]

_REPO = Path(__file__).resolve().parents[2]

DINO_4SCALE_800x1333 = ((100, 167), (50, 84), (25, 42), (13, 21))


@dataclass(frozen=True)
class Problem:
    """One MSDA problem size. ``queries=None`` means one query per value position (encoder)."""

    name: str
    shapes: tuple[tuple[int, int], ...]
    queries: int | None
    heads: int = 8
    channels: int = 32
    points: int = 4

    @property
    def num_values(self) -> int:
        return sum(h * w for h, w in self.shapes)

    @property
    def num_queries(self) -> int:
        return self.num_values if self.queries is None else self.queries


PRESETS = {
    "encoder": Problem("encoder", DINO_4SCALE_800x1333, None),
    "decoder": Problem("decoder", DINO_4SCALE_800x1333, 900),
}
DTYPES = {
    "float64": torch.float64,
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


def reference_points(problem: Problem, batch: int, generator: torch.Generator) -> torch.Tensor:
    """``[B, Q, 2]`` normalized points: pixel centres of all positions (encoder), else random."""
    if problem.queries is not None:
        return torch.rand(batch, problem.queries, 2, generator=generator)
    points = []
    for height, width in problem.shapes:
        ys, xs = torch.meshgrid(
            (torch.arange(height) + 0.5) / height,
            (torch.arange(width) + 0.5) / width,
            indexing="ij",
        )
        points.append(torch.stack([xs.flatten(), ys.flatten()], -1))
    return torch.cat(points).expand(batch, -1, -1)


def make_inputs(
    problem: Problem,
    batch: int,
    dtype: torch.dtype,
    device: str | torch.device,
    locations: str,
    seed: int = 0,
    requires_grad: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """value, spatial_shapes, level_start_index, sampling_locations, attention_weights.

    Realistic locations are what a trained deformable encoder/decoder produces: each query's
    reference point plus offsets of a few pixels on every level. Uniform ones are spread over
    the whole map (worst case for cache locality).
    """
    generator = torch.Generator().manual_seed(seed)
    levels, heads, points = len(problem.shapes), problem.heads, problem.points
    queries = problem.num_queries
    spatial_shapes = torch.tensor(problem.shapes, dtype=torch.long)
    sizes = spatial_shapes.prod(1)
    level_start_index = torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])
    value = torch.randn(batch, problem.num_values, heads, problem.channels, generator=generator)
    loc_size = (batch, queries, heads, levels, points, 2)
    if locations == "uniform":
        sampling_locations = torch.rand(loc_size, generator=generator)
    elif locations == "realistic":
        centres = reference_points(problem, batch, generator)[:, :, None, None, None, :]
        pixel_offsets = torch.randn(loc_size, generator=generator) * 2.0
        level_size = spatial_shapes.flip(-1).float()[None, None, None, :, None, :]
        sampling_locations = centres + pixel_offsets / level_size
    else:
        raise ValueError(f"locations must be 'realistic' or 'uniform', got {locations!r}")
    logits = torch.randn(batch, queries, heads, levels * points, generator=generator)
    attention_weights = logits.softmax(-1).view(batch, queries, heads, levels, points)
    coord_dtype = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    tensors = [
        value.to(device, dtype),
        spatial_shapes.to(device),
        level_start_index.to(device),
        sampling_locations.to(device, coord_dtype),
        attention_weights.to(device, coord_dtype),
    ]
    for index in (0, 3, 4):
        tensors[index].requires_grad_(requires_grad)
    return tensors


def grid_sample_baseline(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor | Sequence[tuple[int, int]],
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """The baseline the compiled op is timed against: multi-scale deformable attention as
    Deformable DETR's reference code computes it (one ``grid_sample`` per level, then the
    weighted sum), without the non-finite handling of :func:`~detr_ext.ops.ms_deform_attn_pytorch`
    (which costs it 13-17 % on CPU). Same arguments and result as that function.

    Reduced-precision values are sampled in float32 on CPU, where ``grid_sample`` in those
    dtypes is wrong on per-level views (see ``detr_ext/ops/reference.py``), and on CUDA when
    the locations are float32 (as :func:`make_inputs` and the models under autocast give them):
    autocast runs ``grid_sample`` in the widest input dtype, and locations rounded to bfloat16
    would sample other points (up to 0.65 pixel off on a 167-pixel-wide level; the outputs
    then differ by up to 0.7 on the encoder preset). With reduced-precision locations on CUDA
    everything is sampled in the values' dtype.

    ``spatial_shapes`` may be the (height, width) pairs on the host: reading a CUDA tensor's
    values waits for the GPU, which the timed steps (``benchmark_steps``) leave out of the
    baseline's time as a training loop would, by reading them once."""
    compute_dtype = value.dtype
    reduced = value.dtype in (torch.float16, torch.bfloat16)
    if reduced and (value.device.type == "cpu" or sampling_locations.dtype == torch.float32):
        compute_dtype = torch.float32
    batch, _, heads, channels = value.shape
    _, queries, _, levels, points, _ = sampling_locations.shape
    if isinstance(spatial_shapes, torch.Tensor):
        spatial_shapes = spatial_shapes.tolist()
    sizes = [(int(h), int(w)) for h, w in spatial_shapes]
    grids = 2 * sampling_locations.to(compute_dtype) - 1
    samples = []
    for level, part in enumerate(value.to(compute_dtype).split([h * w for h, w in sizes], dim=1)):
        height, width = sizes[level]
        # [B, h*w, H, C] -> [B*H, C, h, w]; grid [B, Q, H, P, 2] -> [B*H, Q, P, 2]
        maps = part.permute(0, 2, 3, 1).reshape(batch * heads, channels, height, width)
        grid = grids[:, :, :, level].transpose(1, 2).flatten(0, 1)
        samples.append(
            F.grid_sample(maps, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        )
    weights = attention_weights.to(compute_dtype).transpose(1, 2)
    weights = weights.reshape(batch * heads, 1, queries, levels * points)
    output = (torch.stack(samples, dim=-2).flatten(-2) * weights).sum(-1)  # [B*H, C, Q]
    output = output.view(batch, heads * channels, queries).transpose(1, 2)
    return output.to(value.dtype).contiguous()


def interleaved_median_times(
    runs: Mapping[str, Callable[[], object]],
    device: str,
    warmup: int,
    repeat: int,
    burst: int = 1,
) -> dict[str, float]:
    """Median seconds of one call of each of ``runs`` after ``warmup`` calls of each, timed in
    turns (one interval of each per round), so that a change of machine load affects them alike.

    Each timed interval is ``burst`` consecutive calls, and a call's time is the interval over
    ``burst``. On a GPU the host then queues the calls back to back without waiting for them, as
    a training loop does, so one call's host work (Python, autograd, launches) overlaps the
    previous call's kernels and the time is that of a step in such a loop; ``burst=1`` times every
    call alone, from an idle GPU, with its host time before the first kernel included."""
    if repeat < 1 or warmup < 0 or burst < 1:
        raise ValueError(
            f"expected repeat >= 1, warmup >= 0 and burst >= 1, got {repeat}, {warmup} and {burst}"
        )
    for _ in range(warmup):
        for run in runs.values():
            run()
    _synchronize(device)
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeat):
        for name, run in runs.items():
            times[name].append(_time_once(run, device, burst) / burst)
    return {name: statistics.median(values) for name, values in times.items()}


def _time_once(run: Callable[[], object], device: str, calls: int = 1) -> float:
    """Seconds of ``calls`` consecutive calls of ``run``."""
    if device == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(calls):
            run()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    begin = time.perf_counter()
    for _ in range(calls):
        run()
    return time.perf_counter() - begin


def _synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def median_time(
    run: Callable[[], object], device: str, warmup: int, repeat: int, burst: int = 1
) -> float:
    """Median seconds of ``run`` after ``warmup`` calls (CUDA events on a GPU; ``burst`` as in
    :func:`interleaved_median_times`)."""
    return interleaved_median_times({"run": run}, device, warmup, repeat, burst)["run"]


POISON_BYTE = 0xFF  # every byte 0xFF: NaN in float64, float32, float16 and bfloat16 alike


def poison_cuda_allocator(nbytes: int) -> None:
    """Fill free memory of torch's CUDA caching allocator with NaN bytes: one block of
    ``nbytes`` (large allocations made next are cut from it) and 64 blocks of the small-object
    pool, all freed again. A tensor allocated next with ``empty`` holds NaN until written, so an
    output element a kernel forgot to write shows as NaN instead of as a plausible zero."""
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    blocks = [torch.full((nbytes,), POISON_BYTE, dtype=torch.uint8, device="cuda")]
    blocks += [
        torch.full((2**19,), POISON_BYTE, dtype=torch.uint8, device="cuda") for _ in range(64)
    ]
    torch.cuda.synchronize()
    del blocks


def environment(device: str) -> dict:
    """Device (GPU or CPU model name), threads, torch / CUDA / Python versions, the checkout's
    commit and what the extension was built with."""
    return {
        "device": device,
        "device_name": torch.cuda.get_device_name() if device == "cuda" else cpu_name(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "python": platform.python_version(),
        "commit": git_commit(_REPO),
        "build": build_info(),
    }
