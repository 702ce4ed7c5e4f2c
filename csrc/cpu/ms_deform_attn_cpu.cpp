// CPU kernels of multi-scale deformable attention (see ../ms_deform_attn.h for semantics).
//
// Forward: parallel over (batch, query) chunks; for each (b, q, h) the four bilinear corners of a
// sampling point are accumulated in one pass over the channels (out-of-bounds corners point at a
// row of zeros with weight 0, so the inner loop has no branches and vectorizes).
// Non-finite inputs (rule in ../ms_deform_attn.h) cost no test in the per-channel loops: the
// attention weight of a point carries a NaN "poison" when its weight or a coordinate is not
// finite, and a NaN times the zero row (or a zero dot product) is NaN.
// Backward: parallel over (batch, head) pairs, so that each thread owns a disjoint slice of
// grad_value and needs no atomics; location and weight gradients come from per-corner dot
// products with grad_output computed in the same pass that scatters grad_value.
// The hot loops are compiled twice on x86-64 (AVX2+FMA and baseline) and chosen at load time by
// GCC's target_clones, so one binary is fast on modern CPUs and still runs everywhere.
#include "../ms_deform_attn.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <vector>

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && !defined(DETR_EXT_NO_CLONES)
#define DETR_EXT_CPU_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define DETR_EXT_CPU_CLONES
#endif

#define DETR_EXT_ALWAYS_INLINE inline __attribute__((always_inline))

namespace detr_ext {
namespace {

struct Level {
  int64_t height;
  int64_t width;
  int64_t start;
};

// The four bilinear corners of one sampling point: offsets into the value's N axis (or -1 when the
// corner lies outside the map) and their interpolation weights. Matches grid_sample with
// align_corners=False: pixel centres sit at (i + 0.5) / size.
template <typename acc_t>
struct Corners {
  int64_t index[4];  // top-left, top-right, bottom-left, bottom-right
  acc_t weight[4];
  acc_t frac_x;
  acc_t frac_y;
};

template <typename acc_t>
DETR_EXT_ALWAYS_INLINE Corners<acc_t> bilinear_corners(acc_t loc_x, acc_t loc_y, const Level& level,
                                                       int64_t num_values) {
  Corners<acc_t> corners;
  const acc_t px = loc_x * static_cast<acc_t>(level.width) - acc_t(0.5);
  const acc_t py = loc_y * static_cast<acc_t>(level.height) - acc_t(0.5);
  // Some corner can be inside only for px in [-1, W) and py in [-1, H). Anything else (also
  // NaN, inf and huge values that would overflow the integer conversion) reads no corner; a
  // non-finite point still yields NaN through non_finite_poison() below.
  if (!(px >= acc_t(-1) && px < static_cast<acc_t>(level.width) && py >= acc_t(-1) &&
        py < static_cast<acc_t>(level.height))) {
    for (int k = 0; k < 4; ++k) {
      corners.index[k] = -1;
      corners.weight[k] = acc_t(0);
    }
    corners.frac_x = acc_t(0);
    corners.frac_y = acc_t(0);
    return corners;
  }
  const acc_t fx0 = std::floor(px);
  const acc_t fy0 = std::floor(py);
  corners.frac_x = px - fx0;
  corners.frac_y = py - fy0;
  const acc_t one = acc_t(1);
  corners.weight[0] = (one - corners.frac_x) * (one - corners.frac_y);
  corners.weight[1] = corners.frac_x * (one - corners.frac_y);
  corners.weight[2] = (one - corners.frac_x) * corners.frac_y;
  corners.weight[3] = corners.frac_x * corners.frac_y;
  const int64_t x0 = static_cast<int64_t>(fx0);
  const int64_t y0 = static_cast<int64_t>(fy0);
  for (int k = 0; k < 4; ++k) {
    const int64_t x = x0 + (k & 1);
    const int64_t y = y0 + (k >> 1);
    const bool inside = x >= 0 && x < level.width && y >= 0 && y < level.height;
    const int64_t index = level.start + y * level.width + x;
    // The second test keeps a corrupted spatial_shapes / level_start_index from reading past N.
    corners.index[k] = (inside && index >= 0 && index < num_values) ? index : -1;
    if (corners.index[k] < 0) corners.weight[k] = acc_t(0);
  }
  return corners;
}

// 0 for a point with finite coordinates, NaN when one is NaN or +-inf: x - x is exactly 0 only for
// a finite x (no -ffast-math here, so the compiler may not fold it). Added to the attention
// weight it makes the point's output and location gradients NaN; added to the weight gradient it
// makes that NaN too. Three flops per point and no branch: an isfinite select in
// bilinear_corners' out-of-bounds branch instead made GCC 12 re-vectorize the backward epilogue
// (+10% instructions per call).
template <typename acc_t>
DETR_EXT_ALWAYS_INLINE acc_t non_finite_poison(acc_t loc_x, acc_t loc_y) {
  return (loc_x - loc_x) + (loc_y - loc_y);
}

// The attention weight to scale a point's corners with: +-inf becomes NaN (w - w; the sign of an
// infinite sum would depend on the order of the additions), and a non-finite point's poison.
template <typename acc_t>
DETR_EXT_ALWAYS_INLINE acc_t effective_weight(acc_t weight, acc_t poison) {
  return weight + (weight - weight) + poison;
}

template <typename scalar_t, typename coord_t>
struct Problem {
  const scalar_t* value;        // [B, N, H, C]
  const coord_t* locations;     // [B, Q, H, L, P, 2]
  const coord_t* weights;       // [B, Q, H, L, P]
  const Level* levels;          // [L]
  const scalar_t* zeros;        // [C] zeros: the "value" of an out-of-bounds corner
  int64_t batch, num_values, num_heads, channels, num_queries, num_levels, num_points;
};

// ---------------------------------------------------------------- forward
template <typename scalar_t, typename coord_t>
DETR_EXT_ALWAYS_INLINE void forward_body(const Problem<scalar_t, coord_t>& pb, scalar_t* output,
                                         int64_t begin, int64_t end) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t C = pb.channels, H = pb.num_heads, LP = pb.num_levels * pb.num_points;
  std::vector<acc_t> accumulator(C);
  acc_t* __restrict__ acc = accumulator.data();
  for (int64_t bq = begin; bq < end; ++bq) {
    const int64_t b = bq / pb.num_queries;
    const scalar_t* value_b = pb.value + b * pb.num_values * H * C;
    for (int64_t h = 0; h < H; ++h) {
      const int64_t point_base = (bq * H + h) * LP;
      for (int64_t c = 0; c < C; ++c) acc[c] = acc_t(0);
      for (int64_t l = 0; l < pb.num_levels; ++l) {
        for (int64_t p = 0; p < pb.num_points; ++p) {
          const int64_t point = point_base + l * pb.num_points + p;
          const acc_t loc_x = static_cast<acc_t>(pb.locations[2 * point]);
          const acc_t loc_y = static_cast<acc_t>(pb.locations[2 * point + 1]);
          const acc_t attn = effective_weight(static_cast<acc_t>(pb.weights[point]),
                                              non_finite_poison(loc_x, loc_y));
          const Corners<acc_t> cr = bilinear_corners(loc_x, loc_y, pb.levels[l], pb.num_values);
          const scalar_t* __restrict__ v[4];
          acc_t w[4];
          for (int k = 0; k < 4; ++k) {
            v[k] = cr.index[k] < 0 ? pb.zeros : value_b + (cr.index[k] * H + h) * C;
            w[k] = cr.weight[k] * attn;
          }
#pragma omp simd
          for (int64_t c = 0; c < C; ++c) {
            acc[c] += w[0] * static_cast<acc_t>(v[0][c]) + w[1] * static_cast<acc_t>(v[1][c]) +
                      w[2] * static_cast<acc_t>(v[2][c]) + w[3] * static_cast<acc_t>(v[3][c]);
          }
        }
      }
      scalar_t* __restrict__ out = output + (bq * H + h) * C;
      for (int64_t c = 0; c < C; ++c) out[c] = static_cast<scalar_t>(acc[c]);
    }
  }
}

// ---------------------------------------------------------------- backward
// grad_value_t is float for reduced-precision values (accumulated there, cast at the end).
template <typename scalar_t, typename coord_t, typename grad_value_t>
DETR_EXT_ALWAYS_INLINE void backward_body(const Problem<scalar_t, coord_t>& pb,
                                          const scalar_t* grad_output, grad_value_t* grad_value,
                                          coord_t* grad_locations, coord_t* grad_weights,
                                          int64_t begin, int64_t end) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t C = pb.channels, H = pb.num_heads, Q = pb.num_queries;
  const int64_t LP = pb.num_levels * pb.num_points;
  std::vector<acc_t> grad_out_buffer(C);
  // Scatter targets of out-of-bounds corners: one row per corner so that no two rows alias.
  std::vector<grad_value_t> discard(4 * C);
  acc_t* __restrict__ gout = grad_out_buffer.data();
  for (int64_t bh = begin; bh < end; ++bh) {
    const int64_t b = bh / H, h = bh % H;
    const scalar_t* value_b = pb.value + b * pb.num_values * H * C;
    grad_value_t* grad_value_b = grad_value + b * pb.num_values * H * C;
    for (int64_t q = 0; q < Q; ++q) {
      const int64_t bq = b * Q + q;
      const scalar_t* go = grad_output + (bq * H + h) * C;
      for (int64_t c = 0; c < C; ++c) gout[c] = static_cast<acc_t>(go[c]);
      const int64_t point_base = (bq * H + h) * LP;
      for (int64_t l = 0; l < pb.num_levels; ++l) {
        const Level& level = pb.levels[l];
        for (int64_t p = 0; p < pb.num_points; ++p) {
          const int64_t point = point_base + l * pb.num_points + p;
          const acc_t loc_x = static_cast<acc_t>(pb.locations[2 * point]);
          const acc_t loc_y = static_cast<acc_t>(pb.locations[2 * point + 1]);
          const acc_t poison = non_finite_poison(loc_x, loc_y);
          const acc_t attn = effective_weight(static_cast<acc_t>(pb.weights[point]), poison);
          const Corners<acc_t> cr = bilinear_corners(loc_x, loc_y, level, pb.num_values);
          const scalar_t* __restrict__ v[4];
          grad_value_t* __restrict__ gv[4];
          acc_t scatter_weight[4];
          for (int k = 0; k < 4; ++k) {
            const bool inside = cr.index[k] >= 0;
            v[k] = inside ? value_b + (cr.index[k] * H + h) * C : pb.zeros;
            gv[k] = inside ? grad_value_b + (cr.index[k] * H + h) * C : discard.data() + k * C;
            scatter_weight[k] = cr.weight[k] * attn;
          }
          acc_t dot0 = 0, dot1 = 0, dot2 = 0, dot3 = 0;
          // omp simd: lets the float reductions
          // vectorize without -ffast-math; iterations are independent (distinct rows per corner).
#pragma omp simd reduction(+ : dot0, dot1, dot2, dot3)
          for (int64_t c = 0; c < C; ++c) {
            const acc_t g = gout[c];
            dot0 += g * static_cast<acc_t>(v[0][c]);
            dot1 += g * static_cast<acc_t>(v[1][c]);
            dot2 += g * static_cast<acc_t>(v[2][c]);
            dot3 += g * static_cast<acc_t>(v[3][c]);
            gv[0][c] += static_cast<grad_value_t>(scatter_weight[0] * g);
            gv[1][c] += static_cast<grad_value_t>(scatter_weight[1] * g);
            gv[2][c] += static_cast<grad_value_t>(scatter_weight[2] * g);
            gv[3][c] += static_cast<grad_value_t>(scatter_weight[3] * g);
          }
          // Out-of-bounds corners have zero value, so their dots are zero already. The weight
          // gradient does not involve the weight itself, so a non-finite point adds its poison.
          const acc_t fx = cr.frac_x, fy = cr.frac_y, one = acc_t(1);
          grad_weights[point] =
              static_cast<coord_t>(cr.weight[0] * dot0 + cr.weight[1] * dot1 +
                                   cr.weight[2] * dot2 + cr.weight[3] * dot3 + poison);
          // d(bilinear)/d(px) and /d(py); px = x * W - 0.5, so d/dx = W * d/dpx.
          const acc_t d_px = (one - fy) * (dot1 - dot0) + fy * (dot3 - dot2);
          const acc_t d_py = (one - fx) * (dot2 - dot0) + fx * (dot3 - dot1);
          grad_locations[2 * point] =
              static_cast<coord_t>(attn * d_px * static_cast<acc_t>(level.width));
          grad_locations[2 * point + 1] =
              static_cast<coord_t>(attn * d_py * static_cast<acc_t>(level.height));
        }
      }
    }
  }
}

// Non-template entry points so that target_clones can build one AVX2 and one baseline copy each.
#define DETR_EXT_DEFINE_CPU_KERNELS(SCALAR, COORD, GRAD_VALUE)                                    \
  DETR_EXT_CPU_CLONES void forward_range(const Problem<SCALAR, COORD>& pb, SCALAR* output,       \
                                         int64_t begin, int64_t end) {                           \
    forward_body(pb, output, begin, end);                                                         \
  }                                                                                               \
  DETR_EXT_CPU_CLONES void backward_range(const Problem<SCALAR, COORD>& pb,                      \
                                          const SCALAR* grad_output, GRAD_VALUE* grad_value,      \
                                          COORD* grad_locations, COORD* grad_weights,             \
                                          int64_t begin, int64_t end) {                           \
    backward_body(pb, grad_output, grad_value, grad_locations, grad_weights, begin, end);         \
  }

DETR_EXT_DEFINE_CPU_KERNELS(double, double, double)
DETR_EXT_DEFINE_CPU_KERNELS(float, float, float)
DETR_EXT_DEFINE_CPU_KERNELS(at::BFloat16, at::BFloat16, float)
DETR_EXT_DEFINE_CPU_KERNELS(at::BFloat16, float, float)
DETR_EXT_DEFINE_CPU_KERNELS(at::Half, at::Half, float)
DETR_EXT_DEFINE_CPU_KERNELS(at::Half, float, float)
#undef DETR_EXT_DEFINE_CPU_KERNELS

// The level table, checked against value's N: the Python front checks it too, but not while
// torch.compile / torch.export trace (the tensors have no values then), so a compiled or
// exported model reaches the kernel with whatever it is given. On the host here, checking is
// free, and a wrong table would read rows of another level (or past the end of value).
std::vector<Level> read_levels(const at::Tensor& spatial_shapes,
                               const at::Tensor& level_start_index, int64_t num_values) {
  const auto shapes = spatial_shapes.to(at::kLong).contiguous();
  const auto starts = level_start_index.to(at::kLong).contiguous();
  const int64_t* shape_data = shapes.data_ptr<int64_t>();
  const int64_t* start_data = starts.data_ptr<int64_t>();
  std::vector<Level> levels(shapes.size(0));
  int64_t expected_start = 0;
  for (size_t l = 0; l < levels.size(); ++l) {
    levels[l] = Level{shape_data[2 * l], shape_data[2 * l + 1], start_data[l]};
    TORCH_CHECK(levels[l].height > 0 && levels[l].width > 0,
                "ms_deform_attn (CPU kernel): spatial_shapes must be positive, got level ", l,
                " of ", levels[l].height, " x ", levels[l].width);
    TORCH_CHECK(levels[l].start == expected_start,
                "ms_deform_attn (CPU kernel): level_start_index does not match spatial_shapes: "
                "level ",
                l, " starts at ", levels[l].start, ", expected ", expected_start);
    expected_start += levels[l].height * levels[l].width;
  }
  TORCH_CHECK(expected_start == num_values, "ms_deform_attn (CPU kernel): spatial_shapes cover ",
              expected_start, " positions but value has N=", num_values);
  return levels;
}

template <typename scalar_t, typename coord_t>
Problem<scalar_t, coord_t> make_problem(const at::Tensor& value, const at::Tensor& locations,
                                        const at::Tensor& weights,
                                        const std::vector<Level>& levels,
                                        const at::Tensor& zeros) {
  Problem<scalar_t, coord_t> pb;
  pb.value = value.const_data_ptr<scalar_t>();
  pb.locations = locations.const_data_ptr<coord_t>();
  pb.weights = weights.const_data_ptr<coord_t>();
  pb.levels = levels.data();
  pb.zeros = zeros.const_data_ptr<scalar_t>();
  pb.batch = value.size(0);
  pb.num_values = value.size(1);
  pb.num_heads = value.size(2);
  pb.channels = value.size(3);
  pb.num_queries = locations.size(1);
  pb.num_levels = locations.size(3);
  pb.num_points = locations.size(4);
  return pb;
}

// Calls fn.template operator()<scalar_t, coord_t>() for the (value, coordinate) dtype pair.
template <typename Fn>
void dispatch_dtypes(const at::Tensor& value, const at::Tensor& locations, Fn&& fn) {
  const bool float_coords = locations.scalar_type() == at::kFloat;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, value.scalar_type(), "ms_deform_attn_cpu", [&] {
    if constexpr (std::is_same_v<scalar_t, at::Half> || std::is_same_v<scalar_t, at::BFloat16>) {
      if (float_coords) {
        fn.template operator()<scalar_t, float>();
        return;
      }
    }
    fn.template operator()<scalar_t, scalar_t>();
  });
}

void check_cpu(const at::Tensor& tensor, const char* name) {
  TORCH_CHECK(tensor.device().is_cpu(), "ms_deform_attn (CPU kernel): expected ", name,
              " on the CPU, got a tensor on ", tensor.device());
}

}  // namespace

at::Tensor ms_deform_attn_forward_cpu(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                      const at::Tensor& level_start_index,
                                      const at::Tensor& sampling_locations,
                                      const at::Tensor& attention_weights) {
  check_ms_deform_attn_inputs(value, spatial_shapes, level_start_index, sampling_locations,
                              attention_weights);
  check_cpu(value, "value");
  check_cpu(spatial_shapes, "spatial_shapes");
  check_cpu(level_start_index, "level_start_index");
  check_cpu(sampling_locations, "sampling_locations");
  check_cpu(attention_weights, "attention_weights");
  const auto value_c = value.contiguous();
  const auto locations_c = sampling_locations.contiguous();
  const auto weights_c = attention_weights.contiguous();
  const int64_t B = value.size(0), H = value.size(2), C = value.size(3);
  const int64_t Q = sampling_locations.size(1);
  auto output = at::empty({B, Q, H * C}, value.options());
  if (output.numel() == 0) return output;
  const auto levels = read_levels(spatial_shapes, level_start_index, value.size(1));
  const auto zeros = at::zeros({C}, value.options());
  dispatch_dtypes(value, sampling_locations,
                  [&]<typename scalar_t, typename coord_t>() {
                    const auto pb = make_problem<scalar_t, coord_t>(value_c, locations_c,
                                                                    weights_c, levels, zeros);
                    scalar_t* out = output.mutable_data_ptr<scalar_t>();
                    // ~H*L*P*C*4 multiply-adds per query: a few queries per task suffice.
                    const int64_t grain = std::max<int64_t>(1, 16384 / (H * C * 4 + 1));
                    at::parallel_for(0, B * Q, grain, [&](int64_t begin, int64_t end) {
                      forward_range(pb, out, begin, end);
                    });
                  });
  return output;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> ms_deform_attn_backward_cpu(
    const at::Tensor& grad_output, const at::Tensor& value, const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
    const at::Tensor& attention_weights) {
  check_ms_deform_attn_inputs(value, spatial_shapes, level_start_index, sampling_locations,
                              attention_weights);
  check_cpu(grad_output, "grad_output");
  check_cpu(value, "value");
  check_cpu(spatial_shapes, "spatial_shapes");
  check_cpu(level_start_index, "level_start_index");
  check_cpu(sampling_locations, "sampling_locations");
  check_cpu(attention_weights, "attention_weights");
  const int64_t B = value.size(0), H = value.size(2), C = value.size(3);
  const int64_t Q = sampling_locations.size(1);
  TORCH_CHECK(grad_output.dim() == 3 && grad_output.size(0) == B && grad_output.size(1) == Q &&
                  grad_output.size(2) == H * C,
              "ms_deform_attn_backward: expected grad_output of shape [", B, ", ", Q, ", ",
              H * C, "], got ", grad_output.sizes());
  TORCH_CHECK(grad_output.scalar_type() == value.scalar_type(),
              "ms_deform_attn_backward: expected grad_output of dtype ", value.scalar_type(),
              ", got ", grad_output.scalar_type());
  const auto value_c = value.contiguous();
  const auto locations_c = sampling_locations.contiguous();
  const auto weights_c = attention_weights.contiguous();
  const auto grad_output_c = grad_output.contiguous();
  const bool reduced = value.scalar_type() == at::kHalf || value.scalar_type() == at::kBFloat16;
  // Reduced-precision gradients are accumulated in float32 and cast once at the end.
  auto grad_value_acc = at::zeros_like(value_c, value.options().dtype(
                                                    reduced ? at::kFloat : value.scalar_type()));
  auto grad_locations = at::zeros_like(locations_c);
  auto grad_weights = at::zeros_like(weights_c);
  if (B * Q * H * C > 0) {
    const auto levels = read_levels(spatial_shapes, level_start_index, value.size(1));
    const auto zeros = at::zeros({C}, value.options());
    dispatch_dtypes(value, sampling_locations,
                    [&]<typename scalar_t, typename coord_t>() {
                      using grad_value_t = at::opmath_type<scalar_t>;
                      const auto pb = make_problem<scalar_t, coord_t>(value_c, locations_c,
                                                                      weights_c, levels, zeros);
                      const scalar_t* go = grad_output_c.const_data_ptr<scalar_t>();
                      grad_value_t* gv = grad_value_acc.mutable_data_ptr<grad_value_t>();
                      coord_t* gl = grad_locations.mutable_data_ptr<coord_t>();
                      coord_t* gw = grad_weights.mutable_data_ptr<coord_t>();
                      // One (batch, head) pair per task: tasks write disjoint grad_value slices.
                      at::parallel_for(0, B * H, 1, [&](int64_t begin, int64_t end) {
                        backward_range(pb, go, gv, gl, gw, begin, end);
                      });
                    });
  }
  auto grad_value = reduced ? grad_value_acc.to(value.scalar_type()) : grad_value_acc;
  return {grad_value, grad_locations, grad_weights};
}

TORCH_LIBRARY_IMPL(detr_ext, CPU, m) {
  m.impl("ms_deform_attn", &ms_deform_attn_forward_cpu);
  m.impl("ms_deform_attn_backward", &ms_deform_attn_backward_cpu);
}

}  // namespace detr_ext
