// The MSDA forward's gathers alone: a measuring probe for `tools/gpu_check.py probe`
// (detr_ext/ops/gather_probe.py builds it with torch.utils.cpp_extension and feeds it), not part
// of the op.
//
// It walks the same corners as the forward kernel (csrc/cuda/ms_deform_attn_kernels.cuh), with
// the same work mapping: a group of G = kCornerBytes / 16 threads owns one (b, q, h), thread j
// of the group stages point (tile + j)'s four corner byte offsets in shared memory, and every
// thread of the group then loads its 16 bytes of each staged corner (one 16-byte load per
// corner, the four of a point in flight together; variants: two points in flight, more resident
// blocks, the staging's former bank conflicts, or the next tile's offsets loaded early). What it leaves out is the op's own work:
// reading locations, weights and the level table, the corner arithmetic, the bilinear weights,
// the conversions of half-precision data and the multiplications. Each loaded word is added as a
// float32 into the thread's 16-byte sum (one add per word), so that no load is dead code, and
// the sum is stored once. Its time, set beside the op's for the same corners, says how much of
// the op's time the memory system's share is.
//
// offsets: int32 [groups, points, 4], each corner's byte offset into `data` (-1: not read);
// out: float32 [groups, kCornerBytes / 4], thread j's sum at [group, 4j .. 4j + 3].
#include <torch/extension.h>

#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <cstdint>
#include <string>

namespace {

constexpr int kThreads = 256;

__device__ __forceinline__ const char* opaque_pointer(const char* pointer) {
  asm volatile("mov.b64 %0, %0;" : "+l"(pointer));
  return pointer;
}

// kMinBlocks: resident blocks per SM for __launch_bounds__; 5 is the float32 forward's register
// cap, so that the probe runs at the op's occupancy, 8 the most a 256-thread block allows.
// kInFlight: the points whose corners are loaded before any is used (the op: 1, four loads).
// kPadded: the staged points at the op's padded shared-memory slots (t + t / 8, see staged_slot
// in csrc/cuda/ms_deform_attn_device.cuh); without, at slot t, where the groups of a warp read
// from the same banks (the op's staging up to 2026-12-04).
// kPrefetch: the next tile's offsets are loaded before the current tile's gathers (as the op's
// former DETR_EXT_MSDA_FORWARD_PREFETCH=1, which lost on an H200 and was dropped).
template <int kCornerBytes, int kInFlight, int kMinBlocks, bool kPadded = true,
          bool kPrefetch = false>
__global__ void __launch_bounds__(kThreads, kMinBlocks)
    gather_probe_kernel(const char* __restrict__ data, const int4* __restrict__ offsets,
                        int points, int64_t groups, float4* __restrict__ out) {
  constexpr int G = kCornerBytes / 16;
  __shared__ int4 staged[kThreads + kThreads / 8];
  const auto slot_of = [](int t) { return kPadded ? t + (t >> 3) : t; };
  const int64_t thread = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  const int64_t slot = thread / G;
  const int rank = static_cast<int>(threadIdx.x) % G;
  const int first = static_cast<int>(threadIdx.x) - rank;
  if (((thread & ~int64_t(31)) / G) >= groups) return;  // the whole warp is past the end
  const bool active = slot < groups;
  const char* base = opaque_pointer(data + rank * 16);
  float4 sum = make_float4(0.f, 0.f, 0.f, 0.f);
  int4 next = make_int4(-1, -1, -1, -1);
  if (kPrefetch && active && rank < points) next = __ldg(offsets + slot * points + rank);
  for (int tile = 0; tile < points; tile += G) {
    const int point = tile + rank;
    int4 own = make_int4(-1, -1, -1, -1);
    if constexpr (kPrefetch) {
      own = next;
      if (active && point + G < points) next = __ldg(offsets + slot * points + point + G);
    } else {
      if (active && point < points) own = __ldg(offsets + slot * points + point);
    }
    __syncwarp();
    staged[slot_of(threadIdx.x)] = own;
    __syncwarp();
    const int count = min(G, points - tile);
    for (int i = 0; i < count; i += kInFlight) {
      uint4 raw[kInFlight][4];
#pragma unroll
      for (int n = 0; n < kInFlight; ++n) {
        // Past the tile's last point (count not a multiple of kInFlight): no corner.
        const int4 s =
            i + n < count ? staged[slot_of(first + i + n)] : make_int4(-1, -1, -1, -1);
        const int corner[4] = {s.x, s.y, s.z, s.w};
#pragma unroll
        for (int k = 0; k < 4; ++k) {
          raw[n][k] = make_uint4(0u, 0u, 0u, 0u);
          if (corner[k] >= 0) {
            raw[n][k] = __ldg(reinterpret_cast<const uint4*>(base + corner[k]));
          }
        }
      }
#pragma unroll
      for (int n = 0; n < kInFlight; ++n) {
#pragma unroll
        for (int k = 0; k < 4; ++k) {
          sum.x += __uint_as_float(raw[n][k].x);
          sum.y += __uint_as_float(raw[n][k].y);
          sum.z += __uint_as_float(raw[n][k].z);
          sum.w += __uint_as_float(raw[n][k].w);
        }
      }
    }
  }
  if (active) out[slot * G + rank] = sum;
}

template <int kCornerBytes>
void launch(const std::string& variant, int64_t blocks, cudaStream_t stream, const char* data,
            const int4* offsets, int points, int64_t groups, float4* out) {
  if (variant == "plain") {
    gather_probe_kernel<kCornerBytes, 1, 5>
        <<<blocks, kThreads, 0, stream>>>(data, offsets, points, groups, out);
  } else if (variant == "two_points") {
    gather_probe_kernel<kCornerBytes, 2, 5>
        <<<blocks, kThreads, 0, stream>>>(data, offsets, points, groups, out);
  } else if (variant == "full_occupancy") {
    gather_probe_kernel<kCornerBytes, 1, 8>
        <<<blocks, kThreads, 0, stream>>>(data, offsets, points, groups, out);
  } else if (variant == "conflicted") {
    gather_probe_kernel<kCornerBytes, 1, 5, false>
        <<<blocks, kThreads, 0, stream>>>(data, offsets, points, groups, out);
  } else if (variant == "prefetch") {
    gather_probe_kernel<kCornerBytes, 1, 5, true, true>
        <<<blocks, kThreads, 0, stream>>>(data, offsets, points, groups, out);
  } else {
    TORCH_CHECK(false, "gather_probe: variant must be plain, two_points, full_occupancy, ",
                "conflicted or prefetch, got ", variant);
  }
}

torch::Tensor gather_probe(const torch::Tensor& data, const torch::Tensor& offsets,
                           int64_t corner_bytes, const std::string& variant) {
  TORCH_CHECK(data.is_cuda() && data.is_contiguous(), "gather_probe: data must be a contiguous "
              "CUDA tensor, got ", data.device(), data.is_contiguous() ? "" : " (strided)");
  TORCH_CHECK(offsets.is_cuda() && offsets.is_contiguous() &&
                  offsets.scalar_type() == torch::kInt32 && offsets.dim() == 3 &&
                  offsets.size(2) == 4,
              "gather_probe: offsets must be contiguous CUDA int32 [groups, points, 4], got ",
              offsets.scalar_type(), " ", offsets.sizes());
  TORCH_CHECK(data.device() == offsets.device(), "gather_probe: data on ", data.device(),
              ", offsets on ", offsets.device());
  TORCH_CHECK(corner_bytes == 128 || corner_bytes == 64 || corner_bytes == 32,
              "gather_probe: corner_bytes must be 128, 64 or 32, got ", corner_bytes);
  TORCH_CHECK(reinterpret_cast<uintptr_t>(data.data_ptr()) % 16 == 0,
              "gather_probe: data must be 16-byte aligned");
  const c10::cuda::CUDAGuard guard(data.device());
  const int64_t groups = offsets.size(0);
  const int points = static_cast<int>(offsets.size(1));
  auto out = torch::empty({groups, corner_bytes / 4}, data.options().dtype(torch::kFloat32));
  const int64_t threads = groups * (corner_bytes / 16);
  const int64_t blocks = (threads + kThreads - 1) / kThreads;
  if (blocks == 0) return out;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const auto* bytes = static_cast<const char*>(data.data_ptr());
  const auto* corners = reinterpret_cast<const int4*>(offsets.data_ptr<int32_t>());
  auto* sums = reinterpret_cast<float4*>(out.data_ptr<float>());
  if (corner_bytes == 128) {
    launch<128>(variant, blocks, stream, bytes, corners, points, groups, sums);
  } else if (corner_bytes == 64) {
    launch<64>(variant, blocks, stream, bytes, corners, points, groups, sums);
  } else {
    launch<32>(variant, blocks, stream, bytes, corners, points, groups, sums);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  module.def("gather_probe", &gather_probe, "The MSDA forward's gathers alone (a probe)");
}
