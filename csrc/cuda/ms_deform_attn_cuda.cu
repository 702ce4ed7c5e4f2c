// CUDA entry points of multi-scale deformable attention (semantics in ../ms_deform_attn.h, kernels
// and their thread mapping in ms_deform_attn_device.cuh).
//
// Compared with the original Deformable-DETR kernel (one thread per channel, scalar atomics, an
// im2col step that must divide the batch): one thread per 16-byte pack of channels, the point
// index math done once per point and shared through shared memory, location / weight gradients
// reduced with warp shuffles and written without atomics, one launch over all of B * Q * H, and
// float16 / bfloat16 support.
//
// grad_value accumulation: float16 / bfloat16 values scatter into a zeroed float32 buffer with
// float atomics (vector red.v4.f32 on sm_90+), cast to the value dtype once at the end. That costs
// a [B, N, H, C] float32 temporary but keeps the sums of many small contributions accurate, which
// packed __half2 / __nv_bfloat162 atomics (rounding after every add) would not.
#include "../ms_deform_attn.h"
#include "ms_deform_attn_kernels.cuh"

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>  // not ATen/cuda/CUDAContext.h: it needs the cuSPARSE headers
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <initializer_list>
#include <limits>
#include <string>
#include <tuple>
#include <utility>

namespace detr_ext {
namespace {

using msda_cuda::kThreads;
using msda_cuda::MsdaArgs;
using msda_cuda::ScalarIO;

bool aligned16(const void* pointer) { return reinterpret_cast<uintptr_t>(pointer) % 16 == 0; }

// The value of the environment variable `name`: `fallback` when unset or empty, else `first` or
// `second` written as an integer; anything else is an error naming what was expected. The
// switches below are read at every call, so that tools/gpu_check.py can time their settings in
// one process.
int env_choice(const char* name, int first, int second, int fallback) {
  const char* text = std::getenv(name);
  if (text == nullptr || *text == '\0') return fallback;
  const std::string value(text);
  const bool is_first = value == std::to_string(first);
  TORCH_CHECK(is_first || value == std::to_string(second), name, ": expected ", first, " or ",
              second, ", got '", value, "'");
  return is_first ? first : second;
}

// The float32 / float16 / bfloat16 forward with 16-byte packs gathers through byte offsets
// (ms_deform_attn_kernels.cuh, kLean) where they fit in an int; DETR_EXT_MSDA_FORWARD_LEAN=0 makes
// it take the element-offset gather that larger inputs take (the tests compare the two).
bool forward_lean() { return env_choice("DETR_EXT_MSDA_FORWARD_LEAN", 0, 1, 1) == 1; }

bool aligned8(const void* pointer) { return reinterpret_cast<uintptr_t>(pointer) % 8 == 0; }

// Order in which the kernels' thread groups take the (b, q, h) (MsdaArgs::query_tile):
// kDefaultQueryTile, or DETR_EXT_MSDA_QUERY_TILE for benchmarking other orders
// (tools/gpu_check.py times several in one process, so it is read at every call).
constexpr int kDefaultQueryTile = 1;
constexpr long kMaxQueryTile = 4096;

int query_tile() {
  const char* text = std::getenv("DETR_EXT_MSDA_QUERY_TILE");
  if (text == nullptr || *text == '\0') return kDefaultQueryTile;
  char* end = nullptr;
  const long tile = std::strtol(text, &end, 10);
  TORCH_CHECK(end != text && *end == '\0' && tile >= 1 && tile <= kMaxQueryTile,
              "DETR_EXT_MSDA_QUERY_TILE: expected an integer from 1 to ", kMaxQueryTile,
              ", got '", text, "'");
  return static_cast<int>(tile);
}

void check_cuda_inputs(std::initializer_list<std::pair<const at::Tensor*, const char*>> tensors,
                       const at::Tensor& value) {
  for (const auto& [tensor, name] : tensors) {
    TORCH_CHECK(tensor->is_cuda(), "ms_deform_attn (CUDA kernel): expected ", name,
                " on a CUDA device, got a tensor on ", tensor->device());
    TORCH_CHECK(tensor->device() == value.device(), "ms_deform_attn (CUDA kernel): expected ",
                name, " on ", value.device(), " (the device of value), got ", tensor->device());
  }
}

// Contiguous copies of the inputs and the sizes the kernels need.
struct Inputs {
  at::Tensor value, spatial_shapes, level_start_index, locations, weights;
  int64_t batch, num_rows, heads, channels, queries, levels, points;

  Inputs(const at::Tensor& value_in, const at::Tensor& shapes_in, const at::Tensor& starts_in,
         const at::Tensor& locations_in, const at::Tensor& weights_in)
      : value(value_in.contiguous()),
        spatial_shapes(shapes_in.contiguous()),
        level_start_index(starts_in.contiguous()),
        locations(locations_in.contiguous()),
        weights(weights_in.contiguous()),
        batch(value_in.size(0)),
        num_rows(value_in.size(1)),
        heads(value_in.size(2)),
        channels(value_in.size(3)),
        queries(locations_in.size(1)),
        levels(locations_in.size(3)),
        points(locations_in.size(4)) {}

  int64_t num_groups() const { return batch * queries * heads; }
};

// Launch geometry: G threads per (b, q, h), see ms_deform_attn_device.cuh.
struct Geometry {
  int group_size = 1, log2_group_size = 0, chunks = 1;
  unsigned int blocks = 0;
};

Geometry make_geometry(const Inputs& in, int pack) {
  const int64_t packs = (in.channels + pack - 1) / pack;
  Geometry geo;
  while (geo.group_size < packs && geo.group_size < 32) {
    geo.group_size *= 2;
    ++geo.log2_group_size;
  }
  geo.chunks = static_cast<int>((packs + geo.group_size - 1) / geo.group_size);
  const int64_t blocks = (in.num_groups() * geo.group_size + kThreads - 1) / kThreads;
  TORCH_CHECK(blocks <= std::numeric_limits<int32_t>::max(),
              "ms_deform_attn (CUDA kernel): B * Q * H = ", in.num_groups(), " is too large");
  geo.blocks = static_cast<unsigned int>(blocks);
  return geo;
}

// Checks the sizes and may throw: call it before the launch statement, never inside its argument
// list (nvcc evaluates the arguments after pushing the launch configuration, which a throw would
// leave behind).
template <typename scalar_t, typename coord_t>
MsdaArgs<scalar_t, coord_t> make_args(const Inputs& in, const Geometry& geo, int tile) {
  constexpr int64_t kIntMax = std::numeric_limits<int32_t>::max();
  // Corner offsets within a head (row * H * C), H, channel offsets and point indices are kept
  // as int (N counted as at least 1, so that H * C is bounded when N = 0 too; L * P leaves
  // room for a tile of points past it); other element offsets are int64.
  TORCH_CHECK(std::max<int64_t>(in.num_rows, 1) * in.heads * in.channels <= kIntMax &&
                  in.channels <= kIntMax / 2 && in.levels * in.points <= kIntMax / 2,
              "ms_deform_attn (CUDA kernel): N * H * C and C must be below 2^31 and L * P below "
              "2^30, got N = ",
              in.num_rows, ", H = ", in.heads, ", C = ", in.channels, ", L * P = ",
              in.levels * in.points);
  MsdaArgs<scalar_t, coord_t> a;
  a.value = in.value.const_data_ptr<scalar_t>();
  a.spatial_shapes = in.spatial_shapes.const_data_ptr<int64_t>();
  a.level_start = in.level_start_index.const_data_ptr<int64_t>();
  a.locations = in.locations.const_data_ptr<coord_t>();
  a.weights = in.weights.const_data_ptr<coord_t>();
  a.num_groups = in.num_groups();
  a.queries_heads = in.queries * in.heads;
  a.queries = in.queries;
  a.num_rows = in.num_rows;
  a.heads = static_cast<int>(in.heads);
  a.channels = static_cast<int>(in.channels);
  a.row_stride = static_cast<int>(in.heads * in.channels);
  a.num_points = static_cast<int>(in.points);
  a.points_per_group = static_cast<int>(in.levels * in.points);
  a.group_size = geo.group_size;
  a.log2_group_size = geo.log2_group_size;
  a.chunks = geo.chunks;
  a.query_tile = tile;
  return a;
}

// Calls fn.template operator()<scalar_t, coord_t>() for the (value, coordinate) dtype pair.
template <typename Fn>
void dispatch_dtypes(const at::Tensor& value, const at::Tensor& locations, Fn&& fn) {
  const auto value_dtype = value.scalar_type();
  const auto coord_dtype = locations.scalar_type();
  const bool same = coord_dtype == value_dtype;
  const bool float_coords = coord_dtype == at::kFloat;
  const bool reduced = value_dtype == at::kHalf || value_dtype == at::kBFloat16;
  TORCH_CHECK(same || (reduced && float_coords),
              "ms_deform_attn (CUDA kernel): sampling_locations / attention_weights must have the "
              "dtype of value (",
              value_dtype, ")", reduced ? " or float32" : "", ", got ", coord_dtype);
  switch (value_dtype) {
    case at::kDouble:
      return fn.template operator()<double, double>();
    case at::kFloat:
      return fn.template operator()<float, float>();
    case at::kHalf:
      if (same) return fn.template operator()<at::Half, at::Half>();
      return fn.template operator()<at::Half, float>();
    case at::kBFloat16:
      if (same) return fn.template operator()<at::BFloat16, at::BFloat16>();
      return fn.template operator()<at::BFloat16, float>();
    default:
      TORCH_CHECK(false, "ms_deform_attn (CUDA kernel): unsupported value dtype ", value_dtype,
                  "; expected float64, float32, float16 or bfloat16");
  }
}

}  // namespace

at::Tensor ms_deform_attn_forward_cuda(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                       const at::Tensor& level_start_index,
                                       const at::Tensor& sampling_locations,
                                       const at::Tensor& attention_weights) {
  check_ms_deform_attn_inputs(value, spatial_shapes, level_start_index, sampling_locations,
                              attention_weights);
  check_cuda_inputs({{&value, "value"},
                     {&spatial_shapes, "spatial_shapes"},
                     {&level_start_index, "level_start_index"},
                     {&sampling_locations, "sampling_locations"},
                     {&attention_weights, "attention_weights"}},
                    value);
  const int tile = query_tile();
  const bool lean_wanted = forward_lean();
  const c10::cuda::CUDAGuard guard(value.device());
  const Inputs in(value, spatial_shapes, level_start_index, sampling_locations,
                  attention_weights);
  // Every element is written by the kernel (an empty sum over L * P gives 0).
  auto output = at::empty({in.batch, in.queries, in.heads * in.channels}, value.options());
  if (output.numel() == 0) return output;

  dispatch_dtypes(value, sampling_locations, [&]<typename scalar_t, typename coord_t>() {
    scalar_t* out = output.mutable_data_ptr<scalar_t>();
    const bool vec = in.channels % ScalarIO<scalar_t>::kPack == 0 &&
                     aligned16(in.value.const_data_ptr()) && aligned16(out);
    const auto stream = c10::cuda::getCurrentCUDAStream();
    const Geometry geo = make_geometry(in, vec ? msda_cuda::pack_size<scalar_t, true>()
                                               : msda_cuda::pack_size<scalar_t, false>());
    const auto args = make_args<scalar_t, coord_t>(in, geo, tile);
    using Kernel = void (*)(const msda_cuda::MsdaArgs<scalar_t, coord_t>, scalar_t*);
    Kernel kernel = vec ? msda_cuda::ms_deform_attn_forward_kernel<scalar_t, coord_t, true>
                        : msda_cuda::ms_deform_attn_forward_kernel<scalar_t, coord_t, false>;
    if constexpr (sizeof(scalar_t) <= 4) {
      // The lean gather's byte offsets stay below 2^31 (checked here, not in the kernel).
      const bool lean = lean_wanted && vec &&
                        std::max<int64_t>(in.num_rows, 1) * in.heads * in.channels <=
                            std::numeric_limits<int32_t>::max() / int64_t{sizeof(scalar_t)};
      if (lean) kernel = msda_cuda::ms_deform_attn_forward_kernel<scalar_t, coord_t, true, true>;
    }
    kernel<<<geo.blocks, kThreads, 0, stream>>>(args, out);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return output;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> ms_deform_attn_backward_cuda(
    const at::Tensor& grad_output, const at::Tensor& value, const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
    const at::Tensor& attention_weights) {
  check_ms_deform_attn_inputs(value, spatial_shapes, level_start_index, sampling_locations,
                              attention_weights);
  check_cuda_inputs({{&grad_output, "grad_output"},
                     {&value, "value"},
                     {&spatial_shapes, "spatial_shapes"},
                     {&level_start_index, "level_start_index"},
                     {&sampling_locations, "sampling_locations"},
                     {&attention_weights, "attention_weights"}},
                    value);
  const int tile = query_tile();
  const c10::cuda::CUDAGuard guard(value.device());
  const Inputs in(value, spatial_shapes, level_start_index, sampling_locations,
                  attention_weights);
  TORCH_CHECK(grad_output.dim() == 3 && grad_output.size(0) == in.batch &&
                  grad_output.size(1) == in.queries &&
                  grad_output.size(2) == in.heads * in.channels,
              "ms_deform_attn_backward: expected grad_output of shape [", in.batch, ", ",
              in.queries, ", ", in.heads * in.channels, "], got ", grad_output.sizes());
  TORCH_CHECK(grad_output.scalar_type() == value.scalar_type(),
              "ms_deform_attn_backward: expected grad_output of dtype ", value.scalar_type(),
              ", got ", grad_output.scalar_type());

  const bool reduced = value.scalar_type() == at::kHalf || value.scalar_type() == at::kBFloat16;
  // Reduced-precision grad_value is accumulated in float32 and cast once at the end.
  const auto grad_value_dtype = reduced ? at::kFloat : value.scalar_type();
  auto grad_value_acc = at::zeros(in.value.sizes(), value.options().dtype(grad_value_dtype));
  const bool launch = in.num_groups() > 0 && in.levels * in.points > 0 && in.channels > 0;
  // The kernel writes every location / weight gradient; without a launch they are all zero.
  auto grad_locations = launch ? at::empty_like(in.locations) : at::zeros_like(in.locations);
  auto grad_weights = launch ? at::empty_like(in.weights) : at::zeros_like(in.weights);

  if (launch) {
    const auto grad_output_c = grad_output.contiguous();
    dispatch_dtypes(value, sampling_locations, [&]<typename scalar_t, typename coord_t>() {
      using acc_t = msda_cuda::acc_type<scalar_t>;
      const scalar_t* go = grad_output_c.const_data_ptr<scalar_t>();
      acc_t* gv = grad_value_acc.mutable_data_ptr<acc_t>();
      coord_t* gl = grad_locations.mutable_data_ptr<coord_t>();
      coord_t* gw = grad_weights.mutable_data_ptr<coord_t>();
      // 16-byte packs (float64 / float32); float16 / bfloat16 take packs of 4 below.
      const bool vec = sizeof(scalar_t) != 2 && in.channels % ScalarIO<scalar_t>::kPack == 0 &&
                       aligned16(in.value.const_data_ptr()) && aligned16(go) && aligned16(gv);
      const auto stream = c10::cuda::getCurrentCUDAStream();
      if constexpr (sizeof(scalar_t) == 2) {
        // float16 / bfloat16: packs of 4 channels (8-byte loads, 8 threads per (b, q, h) as in
        // float32, one 16-byte vector reduction per corner). On an H200 (2026-12-04, encoder
        // preset, batch 2) this backward took 848 us where packs of 8 took 1664 us.
        if (in.channels % 4 == 0 && aligned8(in.value.const_data_ptr()) && aligned8(go) &&
            aligned16(gv)) {
          const Geometry geo = make_geometry(in, 4);
          const auto args = make_args<scalar_t, coord_t>(in, geo, tile);
          msda_cuda::ms_deform_attn_backward_kernel<scalar_t, coord_t, true, 4>
              <<<geo.blocks, kThreads, 0, stream>>>(args, go, gv, gl, gw);
          C10_CUDA_KERNEL_LAUNCH_CHECK();
          return;
        }
      }
      const Geometry geo = make_geometry(in, vec ? msda_cuda::pack_size<scalar_t, true>()
                                                 : msda_cuda::pack_size<scalar_t, false>());
      const auto args = make_args<scalar_t, coord_t>(in, geo, tile);
      if constexpr (sizeof(scalar_t) != 2) {
        if (vec) {
          msda_cuda::ms_deform_attn_backward_kernel<scalar_t, coord_t, true>
              <<<geo.blocks, kThreads, 0, stream>>>(args, go, gv, gl, gw);
          C10_CUDA_KERNEL_LAUNCH_CHECK();
          return;
        }
      }
      msda_cuda::ms_deform_attn_backward_kernel<scalar_t, coord_t, false>
          <<<geo.blocks, kThreads, 0, stream>>>(args, go, gv, gl, gw);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  auto grad_value = reduced ? grad_value_acc.to(value.scalar_type()) : grad_value_acc;
  return {grad_value, grad_locations, grad_weights};
}

}  // namespace detr_ext

TORCH_LIBRARY_IMPL(detr_ext, CUDA, m) {
  m.impl("ms_deform_attn", &detr_ext::ms_deform_attn_forward_cuda);
  m.impl("ms_deform_attn_backward", &detr_ext::ms_deform_attn_backward_cuda);
}
