// Forward and backward CUDA kernels of multi-scale deformable attention (semantics in
// ../ms_deform_attn.h).
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

// read_point (load_point, then locate_point): reads point `point` (= l * P + p) of group `group`
// and locates its bilinear corners, as
// grid_sample(align_corners=False, padding_mode="zeros"): px = x * W - 0.5, py = y * H - 0.5.
// A corner outside the level, or (with corrupted spatial_shapes / level_start_index) outside
// [0, N), gets offset -1 and is never read.
// Non-finite inputs (rule in ../ms_deform_attn.h), as in the CPU kernel's non_finite_poison /
// effective_weight and without a test in the per-channel loops: x - x is exactly 0 for a finite x
// and NaN otherwise (no fast-math here, so it is not folded). A non-finite coordinate puts NaN
// into `poison` and `attn`, a +-inf weight turns `attn` into NaN; a NaN attn times a zero corner
// or zero dot product is NaN, so the output and the location gradients of the point are NaN, and
// `poison` makes its weight gradient NaN.
template <typename acc_t>
struct PointInputs {
  acc_t loc_x, loc_y, weight;
};

// The per-point loads of read_point: point `point` of group `group`'s location and weight.
template <typename scalar_t, typename coord_t>
__device__ __forceinline__ PointInputs<acc_type<scalar_t>> load_point(
    const MsdaArgs<scalar_t, coord_t>& a, int64_t group, int point) {
  using CoordIO = ScalarIO<coord_t>;
  const int64_t index = group * a.points_per_group + point;
  return {CoordIO::load(a.locations + 2 * index), CoordIO::load(a.locations + 2 * index + 1),
          CoordIO::load(a.weights + index)};
}

// read_point from its loaded inputs (load_point): the level, the corners and the factors.
template <typename scalar_t, typename coord_t>
__device__ __forceinline__ SamplePoint<acc_type<scalar_t>> locate_point(
    const MsdaArgs<scalar_t, coord_t>& a, const PointInputs<acc_type<scalar_t>>& in, int point) {
  using acc_t = acc_type<scalar_t>;
  const acc_t loc_x = in.loc_x;
  const acc_t loc_y = in.loc_y;
  const int level = point / a.num_points;
  const int64_t height = a.spatial_shapes[2 * level];
  const int64_t width = a.spatial_shapes[2 * level + 1];
  const int64_t start = a.level_start[level];

  SamplePoint<acc_t> sp = empty_point<acc_t>();
  const acc_t weight = in.weight;
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

template <typename scalar_t, typename coord_t>
__device__ __forceinline__ SamplePoint<acc_type<scalar_t>> read_point(
    const MsdaArgs<scalar_t, coord_t>& a, int64_t group, int point) {
  return locate_point(a, load_point(a, group, point), point);
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

// ------------------------------------------------------------------------------------ forward
// Adds one staged point's four weighted corners of the thread's pack to acc.
template <typename acc_t, int kPack>
__device__ __forceinline__ void accumulate_corners(const Coef4<acc_t>& w,
                                                   const acc_t (&v)[4][kPack],
                                                   acc_t (&acc)[kPack]) {
#pragma unroll
  for (int k = 0; k < 4; ++k) {
#pragma unroll
    for (int c = 0; c < kPack; ++c) acc[c] += w.v[k] * v[k][c];
  }
}

// kLean (the default for 16-byte packs of float32 / float16 / bfloat16 when
// N * H * C * sizeof(scalar_t) < 2^31; DETR_EXT_MSDA_FORWARD_LEAN=0 turns it off): corners staged
// as byte offsets and gathered by gather_corners_raw, fewer instructions per corner. On an H200
// (2026-12-04, encoder preset, batch 2) it took the half-precision forward from 168 to 150 us and
// the float32 one from 209 to 208 us (T=1; 205 to 200 us at T=64). Same products, same order:
// the same output bit for bit as the element-offset gather.
//
// kPrefetch (with kLean only; DETR_EXT_MSDA_FORWARD_PREFETCH=1, off by default until measured on
// a GPU): each thread loads the location and weight of its point of the next tile before the
// group gathers the current tile's corners, so that the next tile's loads wait alongside the
// gathers instead of after them. On an H200 (2026-12-04) the forward's gathers alone with no
// corner read took 97.5 us for 136 MB (tools/gpu_check.py probe): a chain of one DRAM round trip
// per tile and warp. Same products in the same order: the same output bit for bit.
template <typename scalar_t, typename coord_t, bool kVec, bool kLean = false,
          bool kPrefetch = false>
__global__ void __launch_bounds__(kThreads, (forward_min_blocks<scalar_t>()))
    ms_deform_attn_forward_kernel(const MsdaArgs<scalar_t, coord_t> a,
                                  scalar_t* __restrict__ output) {
  using acc_t = acc_type<scalar_t>;
  constexpr int kPack = pack_size<scalar_t, kVec>();
  // Staged points: corner offsets and the combined weights attn * bilinear, in two arrays (one
  // 16-byte read each per point), at the padded slots of staged_slot.
  __shared__ int4 staged_offsets[kStagedSlots];
  __shared__ Coef4<acc_t> staged_weights[kStagedSlots];

  const GroupPlace place = place_thread(a);
  if (place.warp_idle) return;
  const int64_t b = place.group / a.queries_heads;
  const int64_t h = place.group % a.heads;
  const scalar_t* value_head = a.value + (b * a.num_rows * a.heads + h) * a.channels;
  const int G = a.group_size;
  const int group_slot = staged_slot(place.first_slot);

  for (int chunk = 0; chunk < a.chunks; ++chunk) {
    const int c0 = (chunk * G + place.rank) * kPack;
    const int count = a.channels - c0;  // channels of this pack that exist (<= 0: none)
    const scalar_t* value_pack = value_head + c0;
    const char* value_bytes = nullptr;  // the lean gather's base
    if constexpr (kLean) value_bytes = opaque_pointer(reinterpret_cast<const char*>(value_pack));
    acc_t acc[kPack];
#pragma unroll
    for (int c = 0; c < kPack; ++c) acc[c] = 0;

    static_assert(kLean || !kPrefetch, "the prefetching forward is a variant of the lean one");
    PointInputs<acc_t> next{};  // kPrefetch: the inputs of this thread's point of the next tile
    if constexpr (kPrefetch) {
      if (place.active && place.rank < a.points_per_group) {
        next = load_point(a, place.group, place.rank);
      }
    }
    for (int tile = 0; tile < a.points_per_group; tile += G) {
      const int point = tile + place.rank;
      const bool owner = place.active && point < a.points_per_group;
      SamplePoint<acc_t> sp = empty_point<acc_t>();
      if constexpr (kPrefetch) {
        const PointInputs<acc_t> current = next;
        if (place.active && point + G < a.points_per_group) {
          next = load_point(a, place.group, point + G);
        }
        if (owner) sp = locate_point(a, current, point);
      } else {
        if (owner) sp = read_point(a, place.group, point);
      }
      Coef4<acc_t> coef;
      bilinear_weights(sp.frac_x, sp.frac_y, coef.v);
#pragma unroll
      for (int k = 0; k < 4; ++k) coef.v[k] *= sp.attn;
      int4 offsets_staged = sp.offsets;
      if constexpr (kLean) {  // byte offsets (the host checked that they fit in an int)
        constexpr int kSize = static_cast<int>(sizeof(scalar_t));
        offsets_staged.x = sp.offsets.x >= 0 ? sp.offsets.x * kSize : -1;
        offsets_staged.y = sp.offsets.y >= 0 ? sp.offsets.y * kSize : -1;
        offsets_staged.z = sp.offsets.z >= 0 ? sp.offsets.z * kSize : -1;
        offsets_staged.w = sp.offsets.w >= 0 ? sp.offsets.w * kSize : -1;
      }
      __syncwarp();  // the previous tile's readers are done
      staged_offsets[staged_slot(threadIdx.x)] = offsets_staged;
      staged_weights[staged_slot(threadIdx.x)] = coef;
      __syncwarp();
      if (count <= 0) continue;
      const int staged = min(G, a.points_per_group - tile);
      for (int i = 0; i < staged; ++i) {
        const int slot = group_slot + staged_slot(i);
        const int4 o = staged_offsets[slot];
        const Coef4<acc_t> w = staged_weights[slot];
        const int offsets[4] = {o.x, o.y, o.z, o.w};
        acc_t v[4][kPack];
        gather_point<kLean, kVec>(value_pack, value_bytes, offsets, count, v);
        accumulate_corners(w, v, acc);
      }
    }
    if (place.active && count > 0) {
      store_channels<kVec>(output + place.group * a.channels + c0, count, acc);
    }
  }
}

// ----------------------------------------------------------------------------------- backward
// One pack of one staged point: adds grad_output . value_corner to dot[k] and scatters
// attn * w[k] * grad_output into the grad_value rows of the present corners. `value_pack` and
// `grad_pack` point at the pack's first channel in the head's first row.
template <bool kVec, typename scalar_t, int kPack>
__device__ __forceinline__ void backward_pack(
    const scalar_t* value_pack, acc_type<scalar_t>* grad_pack, const int (&offsets)[4],
    const acc_type<scalar_t> (&scatter)[4], int count, const acc_type<scalar_t> (&g)[kPack],
    acc_type<scalar_t> (&dot)[4]) {
  using acc_t = acc_type<scalar_t>;
  acc_t v[4][kPack];
  gather_corners<kVec>(value_pack, offsets, count, v);
#pragma unroll
  for (int k = 0; k < 4; ++k) {
#pragma unroll
    for (int c = 0; c < kPack; ++c) dot[k] += g[c] * v[k][c];
  }
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    if (offsets[k] >= 0 && scatter[k] != acc_t(0)) {
      acc_t add[kPack];
#pragma unroll
      for (int c = 0; c < kPack; ++c) add[c] = scatter[k] * g[c];
      atomic_add_channels<kVec>(grad_pack + offsets[k], count, add);
    }
  }
}

// grad_value: [B, N, H, C] in acc_t (float32 for float16/bfloat16 values), zero-initialized.
// grad_locations / grad_weights: every element is written exactly once, by the thread that staged
// the point, after the group has reduced the channel sums with warp shuffles (no atomics).
// kPack: channels per thread, pack_size<scalar_t, kVec>() except for float16 / bfloat16 with
// vector loads, which take packs of 4 (8-byte loads, one vector reduction per corner).
template <typename scalar_t, typename coord_t, bool kVec, int kPack = pack_size<scalar_t, kVec>()>
__global__ void __launch_bounds__(kThreads, (backward_min_blocks<scalar_t, kVec, kPack>()))
    ms_deform_attn_backward_kernel(const MsdaArgs<scalar_t, coord_t> a,
                                   const scalar_t* __restrict__ grad_output,
                                   acc_type<scalar_t>* __restrict__ grad_value,
                                   coord_t* __restrict__ grad_locations,
                                   coord_t* __restrict__ grad_weights) {
  using acc_t = acc_type<scalar_t>;
  using CoordIO = ScalarIO<coord_t>;
  __shared__ int4 staged_offsets[kStagedSlots];
  __shared__ Coef4<acc_t> staged_coefs[kStagedSlots];  // frac_x, frac_y, attn, unused

  const GroupPlace place = place_thread(a);
  if (place.warp_idle) return;
  const int64_t b = place.group / a.queries_heads;
  const int64_t h = place.group % a.heads;
  const int64_t head_offset = (b * a.num_rows * a.heads + h) * a.channels;
  const scalar_t* value_head = a.value + head_offset;
  acc_t* grad_value_head = grad_value + head_offset;
  const scalar_t* grad_out_group = grad_output + place.group * a.channels;
  const int G = a.group_size;
  const int group_slot = staged_slot(place.first_slot);

  // grad_output of the first pack stays in registers; further chunks (C > 32 * kPack) reload
  // theirs per point from L1/L2.
  const int first_c0 = place.rank * kPack;
  const int first_count = place.active ? a.channels - first_c0 : 0;
  acc_t first_g[kPack];
  if (first_count > 0) {
    load_channels<kVec>(grad_out_group + first_c0, first_count, first_g);
  } else {
#pragma unroll
    for (int c = 0; c < kPack; ++c) first_g[c] = 0;
  }

  for (int tile = 0; tile < a.points_per_group; tile += G) {
    const int point = tile + place.rank;
    const bool owner = place.active && point < a.points_per_group;
    const SamplePoint<acc_t> sp =
        owner ? read_point(a, place.group, point) : empty_point<acc_t>();
    __syncwarp();
    staged_offsets[staged_slot(threadIdx.x)] = sp.offsets;
    staged_coefs[staged_slot(threadIdx.x)] =
        Coef4<acc_t>{{sp.frac_x, sp.frac_y, sp.attn, acc_t(0)}};
    __syncwarp();

    acc_t own_weight = 0, own_x = 0, own_y = 0;  // sums of the point this thread staged
    const int staged = min(G, a.points_per_group - tile);
    for (int i = 0; i < staged; ++i) {
      const int slot = group_slot + staged_slot(i);
      const int4 o = staged_offsets[slot];
      const Coef4<acc_t> coef = staged_coefs[slot];
      const int offsets[4] = {o.x, o.y, o.z, o.w};
      const acc_t fx = coef.v[0], fy = coef.v[1], attn = coef.v[2];
      acc_t w[4], scatter[4], dot[4] = {0, 0, 0, 0};
      bilinear_weights(fx, fy, w);
#pragma unroll
      for (int k = 0; k < 4; ++k) scatter[k] = attn * w[k];
      if (first_count > 0) {
        backward_pack<kVec>(value_head + first_c0, grad_value_head + first_c0, offsets, scatter,
                            first_count, first_g, dot);
      }
      for (int chunk = 1; chunk < a.chunks; ++chunk) {
        const int c0 = (chunk * G + place.rank) * kPack;
        const int count = place.active ? a.channels - c0 : 0;
        if (count <= 0) continue;
        acc_t g[kPack];
        load_channels<kVec>(grad_out_group + c0, count, g);
        backward_pack<kVec>(value_head + c0, grad_value_head + c0, offsets, scatter, count, g,
                            dot);
      }
      // Missing corners have dot 0 (their value is zero), so they drop out of all three sums.
      // d(bilinear)/d(px) and d(bilinear)/d(py) at fixed corners:
      acc_t sum_weight = w[0] * dot[0] + w[1] * dot[1] + w[2] * dot[2] + w[3] * dot[3];
      acc_t sum_x = (acc_t(1) - fy) * (dot[1] - dot[0]) + fy * (dot[3] - dot[2]);
      acc_t sum_y = (acc_t(1) - fx) * (dot[2] - dot[0]) + fx * (dot[3] - dot[1]);
      for (int offset = G >> 1; offset > 0; offset >>= 1) {  // butterfly within the group
        sum_weight += __shfl_xor_sync(kFullMask, sum_weight, offset);
        sum_x += __shfl_xor_sync(kFullMask, sum_x, offset);
        sum_y += __shfl_xor_sync(kFullMask, sum_y, offset);
      }
      if (place.rank == i) {
        own_weight = sum_weight;
        own_x = sum_x;
        own_y = sum_y;
      }
    }
    if (owner) {
      const int64_t index = place.group * a.points_per_group + point;
      // The weight gradient does not involve the weight itself: a non-finite point adds poison.
      CoordIO::store(grad_weights + index, own_weight + sp.poison);
      // px = x * W - 0.5, so d/dx = W * d/dpx (and likewise for y).
      CoordIO::store(grad_locations + 2 * index, sp.attn * own_x * sp.width);
      CoordIO::store(grad_locations + 2 * index + 1, sp.attn * own_y * sp.height);
    }
  }
}

}  // namespace msda_cuda
}  // namespace detr_ext
