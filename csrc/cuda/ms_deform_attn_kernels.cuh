// Forward and backward CUDA kernels of multi-scale deformable attention (semantics in
// ../ms_deform_attn.h). Their work mapping, staging and point reading are described in
// ms_deform_attn_device.cuh.
#pragma once

#include "ms_deform_attn_device.cuh"

namespace detr_ext {
namespace msda_cuda {

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
// Tried there and dropped: loading the next tile's locations and weights before gathering the
// current tile's corners (7615a0a, DETR_EXT_MSDA_FORWARD_PREFETCH=1): float32 206 -> 221 us at
// T=1, 199 -> 210 us at T=64, half precision unchanged (benchmarks/results/h200_notes.md).
template <typename scalar_t, typename coord_t, bool kVec, bool kLean = false>
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

    for (int tile = 0; tile < a.points_per_group; tile += G) {
      const int point = tile + place.rank;
      const SamplePoint<acc_t> sp = place.active && point < a.points_per_group
                                        ? read_point(a, place.group, point)
                                        : empty_point<acc_t>();
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
