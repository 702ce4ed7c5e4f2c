// The device side shared by the forward and backward CUDA kernels of multi-scale deformable
// attention (ms_deform_attn_kernels.cuh; semantics in ../ms_deform_attn.h): their arguments,
// work mapping, staging slots, point reading and corner gathers.
//
// Work mapping (both kernels): a "group" of G threads (G a power of two <= 32, so a warp holds
// 32 / G whole groups) owns one (b, q, h). Consecutive groups take (b, q, h) in the order that
// `query_tile` T sets (group_of_slot): T = 1 is the output's memory order, h fastest; T > 1 takes
// runs of T consecutive queries of one head, so that the groups of a block sample neighbouring
// positions of the same head (the encoder's queries are the value positions in raster order, so
// their corner rows overlap and are served from L1). Each thread owns packs of kPack contiguous
// channels: pack j + k * G for k < chunks, so that the group reads contiguous channels in each
// chunk.
// G = next_pow2(ceil(C / kPack)) capped at 32; chunks > 1 only when C > 32 * kPack. With kVec a
// pack is one aligned 16-byte load (4 float32, 8 float16/bfloat16, 2 float64); without it (C not a
// multiple of that, or unaligned data) a pack of at most 4 elements is loaded element by element
// and cut at C, so any C works (1, 3, 30, 71, 257, ...).
//
// The L * P sampling points of a group are processed in tiles of G: thread j of the group reads
// location and weight of point (tile + j) (coalesced), computes its corners' element offsets and
// bilinear factors once, and stages them in shared memory; then every thread of the group walks
// the G staged points and gathers its channels. So the per-point index math runs once per point,
// not once per channel, and a gather costs one 32-bit offset added to a pointer: an offset is
// row * H * C from the head's first element (N * H * C < 2^31 is checked on the host), which the
// value and grad_value rows share. (With 64-bit row arithmetic per corner, rematerialized under
// the register cap, the forward spent most of its issue slots on address math on an H200.)
#pragma once

#include "ms_deform_attn_io.cuh"

#include <cstdint>

namespace detr_ext {
namespace msda_cuda {

constexpr int kThreads = 256;  // per block
constexpr unsigned kFullMask = 0xffffffffu;

// Shared-memory slot of the point that thread t stages: t + t / 8. The groups of a warp read
// their staged points together, group g at slot g * G + i; without the padding, the 16-byte
// entries of groups 8 threads apart lie 128 bytes apart, on the same four banks, and a warp's
// read took 4 wavefronts (G = 8: four groups on the same banks; ncu, H200, 2026-12-04: half of
// the forward's shared-load wavefronts were such conflicts, about a third of all the wavefronts
// of the L1 data pipe that the corner gathers need). With it, the groups of a warp read
// different banks for every G <= 16 (only G = 2, sixteen 16-byte entries, needs two). Measured
// there: the conflicts gone, the float32 forward about 2 % faster (209.6 -> 205.3 us).
// The slot of a group's i-th staged point is staged_slot(first) + staged_slot(i), where first
// (the group's first thread) is a multiple of G: for G >= 8 first / 8 and i / 8 add up, for
// G < 8 both i / 8 and the carry are 0.
constexpr int kStagedSlots = kThreads + kThreads / 8;
__device__ __forceinline__ int staged_slot(int thread) { return thread + (thread >> 3); }

// Minimum resident blocks per SM handed to __launch_bounds__ (a register cap of
// 65536 / (256 * n)): chosen from `nvcc -Xptxas -v` for sm_80 / sm_90 as the highest occupancy
// that the compiler reaches without spilling.
template <typename scalar_t>
constexpr int forward_min_blocks() {
  return sizeof(scalar_t) == 4 ? 5 : 4;
}
template <typename scalar_t, bool kVec, int kPack>
constexpr int backward_min_blocks() {
  if constexpr (sizeof(scalar_t) == 4) return 4;
  if constexpr (sizeof(scalar_t) == 2) return kVec && kPack == 4 ? 4 : 3;
  return kVec ? 3 : 2;
}

template <typename scalar_t, typename coord_t>
struct MsdaArgs {
  const scalar_t* value;           // [B, N, H, C]
  const int64_t* spatial_shapes;   // [L, 2] (height, width)
  const int64_t* level_start;      // [L]
  const coord_t* locations;        // [B, Q, H, L, P, 2]
  const coord_t* weights;          // [B, Q, H, L, P]
  int64_t num_groups;              // B * Q * H
  int64_t queries_heads;           // Q * H
  int64_t queries;                 // Q
  int64_t num_rows;                // N
  int heads, channels, num_points, points_per_group;  // H, C, P, L * P
  int row_stride;                                     // H * C (N * H * C < 2^31)
  int group_size, log2_group_size, chunks;            // G, log2(G), ceil(ceil(C / kPack) / G)
  int query_tile;                                     // T >= 1, see group_of_slot
};

// The (b, q, h) group, as b * Q * H + q * H + h, that the slot-th group of threads owns
// (0 <= slot < B * Q * H; a bijection). T = 1: the slot itself. T > 1: slot = b * Q * H +
// tile * T * H + h * Tq + (q - tile * T), where Tq = min(T, Q - tile * T) is the tile's number
// of queries (the last tile of a batch element may be short).
template <typename scalar_t, typename coord_t>
__device__ __forceinline__ int64_t group_of_slot(const MsdaArgs<scalar_t, coord_t>& a,
                                                 int64_t slot) {
  if (a.query_tile <= 1) return slot;
  const int64_t b = slot / a.queries_heads;
  const int64_t rest = slot - b * a.queries_heads;
  const int64_t tile_span = static_cast<int64_t>(a.query_tile) * a.heads;
  const int64_t tile = rest / tile_span;
  const int64_t first_query = tile * a.query_tile;
  const int64_t tile_queries = min(static_cast<int64_t>(a.query_tile), a.queries - first_query);
  const int64_t within = rest - tile * tile_span;
  const int64_t h = within / tile_queries;
  const int64_t q = first_query + (within - h * tile_queries);
  return (b * a.queries + q) * a.heads + h;
}

// Where a thread sits: its (b, q, h) group, its rank in the group, and the shared-memory slot of
// the group's first thread (threads stage their point in slot threadIdx.x).
struct GroupPlace {
  int64_t group;   // b * Q * H + q * H + h
  int rank;
  int first_slot;
  bool active;     // the group's slot < num_groups
  bool warp_idle;  // the whole warp is past the end: it may leave (no block-wide barriers)
};

template <typename scalar_t, typename coord_t>
__device__ __forceinline__ GroupPlace place_thread(const MsdaArgs<scalar_t, coord_t>& a) {
  const int64_t thread = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  const int tid = static_cast<int>(threadIdx.x);
  const int64_t slot = thread >> a.log2_group_size;
  GroupPlace place;
  place.rank = tid & ((1 << a.log2_group_size) - 1);
  place.first_slot = tid - place.rank;
  place.active = slot < a.num_groups;
  place.group = place.active ? group_of_slot(a, slot) : slot;
  place.warp_idle = ((thread & ~int64_t(31)) >> a.log2_group_size) >= a.num_groups;
  return place;
}

template <typename acc_t>
struct SamplePoint {
  int4 offsets;   // row * H * C of the corners (x0,y0), (x0+1,y0), (x0,y0+1), (x0+1,y0+1); -1: none
  acc_t frac_x;   // px - floor(px)
  acc_t frac_y;
  acc_t attn;     // attention weight, NaN for a non-finite weight or point (see read_point)
  acc_t width;    // d(px)/d(loc_x)
  acc_t height;   // d(py)/d(loc_y)
  acc_t poison;   // 0, or NaN when a coordinate is not finite (added to the weight gradient)
};

template <typename acc_t>
__device__ __forceinline__ SamplePoint<acc_t> empty_point() {
  return {make_int4(-1, -1, -1, -1), acc_t(0), acc_t(0), acc_t(0), acc_t(0), acc_t(0), acc_t(0)};
}

// Reads point `point` (= l * P + p) of group `group` and locates its bilinear corners, as
// grid_sample(align_corners=False, padding_mode="zeros"): px = x * W - 0.5, py = y * H - 0.5.
// A corner outside the level, or (with corrupted spatial_shapes / level_start_index) outside
// [0, N), gets offset -1 and is never read.
// Non-finite inputs (rule in ../ms_deform_attn.h), as in the CPU kernel's non_finite_poison /
// effective_weight and without a test in the per-channel loops: x - x is exactly 0 for a finite x
// and NaN otherwise (no fast-math here, so it is not folded). A non-finite coordinate puts NaN
// into `poison` and `attn`, a +-inf weight turns `attn` into NaN; a NaN attn times a zero corner
// or zero dot product is NaN, so the output and the location gradients of the point are NaN, and
// `poison` makes its weight gradient NaN.
template <typename scalar_t, typename coord_t>
__device__ __forceinline__ SamplePoint<acc_type<scalar_t>> read_point(
    const MsdaArgs<scalar_t, coord_t>& a, int64_t group, int point) {
  using acc_t = acc_type<scalar_t>;
  using CoordIO = ScalarIO<coord_t>;
  const int64_t index = group * a.points_per_group + point;
  const acc_t loc_x = CoordIO::load(a.locations + 2 * index);
  const acc_t loc_y = CoordIO::load(a.locations + 2 * index + 1);
  const int level = point / a.num_points;
  const int64_t height = a.spatial_shapes[2 * level];
  const int64_t width = a.spatial_shapes[2 * level + 1];
  const int64_t start = a.level_start[level];

  SamplePoint<acc_t> sp = empty_point<acc_t>();
  const acc_t weight = CoordIO::load(a.weights + index);
  sp.poison = (loc_x - loc_x) + (loc_y - loc_y);
  sp.attn = weight + (weight - weight) + sp.poison;
  sp.width = static_cast<acc_t>(width);
  sp.height = static_cast<acc_t>(height);
  const acc_t px = loc_x * sp.width - acc_t(0.5);
  const acc_t py = loc_y * sp.height - acc_t(0.5);
  // Some corner can be inside only for px in [-1, W) and py in [-1, H); elsewhere (and for NaN
  // and +-inf) no corner is read: the sample and its gradients are zero, or NaN through attn and
  // poison for a non-finite point. The bounds also keep the conversions in range.
  if (!(px >= acc_t(-1) && px < sp.width && py >= acc_t(-1) && py < sp.height)) return sp;
  const acc_t x0f = floor(px);
  const acc_t y0f = floor(py);
  sp.frac_x = px - x0f;
  sp.frac_y = py - y0f;
  const int64_t x0 = static_cast<int64_t>(x0f);
  const int64_t y0 = static_cast<int64_t>(y0f);
  int offsets[4];
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    const int64_t x = x0 + (k & 1);
    const int64_t y = y0 + (k >> 1);
    // Unsigned arithmetic: defined wrap-around for corrupted shapes, and a negative start
    // becomes huge, so the single `< N` test also rejects it.
    const uint64_t row = static_cast<uint64_t>(start) +
                         static_cast<uint64_t>(y) * static_cast<uint64_t>(width) +
                         static_cast<uint64_t>(x);
    const bool inside = x >= 0 && x < width && y >= 0 && y < height &&
                        row < static_cast<uint64_t>(a.num_rows);
    // N * H * C < 2^31 is checked on the host.
    offsets[k] = inside ? static_cast<int>(row) * a.row_stride : -1;
  }
  sp.offsets = make_int4(offsets[0], offsets[1], offsets[2], offsets[3]);
  return sp;
}

template <typename acc_t>
struct alignas(4 * sizeof(acc_t)) Coef4 {
  acc_t v[4];
};

template <typename acc_t>
__device__ __forceinline__ void bilinear_weights(acc_t fx, acc_t fy, acc_t (&w)[4]) {
  w[0] = (acc_t(1) - fx) * (acc_t(1) - fy);
  w[1] = fx * (acc_t(1) - fy);
  w[2] = (acc_t(1) - fx) * fy;
  w[3] = fx * fy;
}

// Loads a thread's pack of the four corners (zeros for missing corners); `pack` points at the
// pack's first channel in the head's first row. All loads are issued before any use, so the four
// gathers are in flight together.
template <bool kVec, typename scalar_t, int kPack>
__device__ __forceinline__ void gather_corners(const scalar_t* pack, const int (&offsets)[4],
                                               int count, acc_type<scalar_t> (&v)[4][kPack]) {
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    if (offsets[k] >= 0) {
      load_channels<kVec>(pack + offsets[k], count, v[k]);
    } else {
#pragma unroll
      for (int c = 0; c < kPack; ++c) v[k][c] = 0;
    }
  }
}

// The lean gather (forward with kLean): the four corners' 16-byte packs as raw bytes from
// `pack` plus each corner's byte offset (-1: none), zeroed as raw words where a corner is
// missing and converted after all loads. Against gather_corners: a 32-bit byte offset added to
// a pointer kept for the loop (no scaling of an element offset), and four raw zero words per
// missing corner instead of a zero per channel and a conversion under a predicate. kVec packs
// of float32 / float16 / bfloat16 only.
template <typename scalar_t, int kPack>
__device__ __forceinline__ void gather_corners_raw(const char* pack, const int (&offsets)[4],
                                                   acc_type<scalar_t> (&v)[4][kPack]) {
  static_assert(kPack * sizeof(scalar_t) == 16, "the lean gather reads 16-byte packs");
  uint4 raw[4];
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    raw[k] = make_uint4(0u, 0u, 0u, 0u);
    if (offsets[k] >= 0) raw[k] = __ldg(reinterpret_cast<const uint4*>(pack + offsets[k]));
  }
#pragma unroll
  for (int k = 0; k < 4; ++k) ScalarIO<scalar_t>::from_raw(raw[k], v[k]);
}

// `pointer`, as a value the compiler cannot recompute from the kernel's arguments: without it,
// nvcc rebuilt the lean gather's 64-bit base (argument load, add, scale) under each corner's
// predicate in the half-precision forward instead of keeping it in two registers.
__device__ __forceinline__ const char* opaque_pointer(const char* pointer) {
  asm volatile("mov.b64 %0, %0;" : "+l"(pointer));
  return pointer;
}

// One staged point's corners of the thread's pack: gather_corners, or with kLean the lean
// gather from `bytes` (the pack's first byte, opaque_pointer) and byte offsets.
template <bool kLean, bool kVec, typename scalar_t, int kPack>
__device__ __forceinline__ void gather_point(const scalar_t* pack, const char* bytes,
                                             const int (&offsets)[4], int count,
                                             acc_type<scalar_t> (&v)[4][kPack]) {
  if constexpr (kLean) {
    gather_corners_raw<scalar_t>(bytes, offsets, v);
  } else {
    gather_corners<kVec>(pack, offsets, count, v);
  }
}

}  // namespace msda_cuda
}  // namespace detr_ext
