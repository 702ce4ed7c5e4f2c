// Multi-scale deformable attention (MSDA): shared declarations of the CPU and CUDA kernels.
//
// Shapes (all tensors on one device; the Python front validates them and makes them contiguous):
//   value               [B, N, H, C]      float64 / float32 / float16 / bfloat16
//   spatial_shapes      [L, 2]  int64     (height, width) of each level, sum(h*w) == N
//   level_start_index   [L]     int64     offset of each level in N
//   sampling_locations  [B, Q, H, L, P, 2] normalized (x, y); 0 and 1 are the outer pixel edges
//   attention_weights   [B, Q, H, L, P]
//   output              [B, Q, H*C]       dtype of value
//
// Semantics: for every (b, q, h) the output is
//   sum_{l,p} attention_weights[b,q,h,l,p] * bilinear(value_l[b,:,h,:], loc[b,q,h,l,p])
// where bilinear() equals grid_sample(mode="bilinear", padding_mode="zeros",
// align_corners=False) at grid point 2*loc-1, i.e. pixel coordinates x*W-0.5, y*H-0.5, and
// corners outside the map contribute zero. L >= 1 (validated).
//
// Non-finite inputs (both kernels and the PyTorch path; see ms_deform_attn's docstring): a point
// with a NaN or +-inf coordinate samples NaN, so output[b, q, h*C:(h+1)*C] is NaN, its attention
// weight gradient and both its location gradients are NaN, and it adds nothing to grad_value. A
// NaN or +-inf attention weight (inf counts as NaN) makes the output of its (b, q, h) and its
// location gradients NaN, keeps its weight gradient finite, and puts NaN into grad_value on the
// in-map corners it samples. Points far outside the map (finite) sample zero, zero gradients.
//
// Sizes: the CUDA kernels need N * H * C and C below 2^31 and L * P below 2^30 (a clear error
// otherwise); the CPU kernel has no such limit.
//
// Coordinate dtype: sampling_locations and attention_weights share one dtype ("coord"), which
// is either the value dtype or, for float16/bfloat16 values, float32 (keeps sub-pixel precision of
// the locations under mixed precision). All arithmetic is done in float32 (float64 for float64).
// Gradients are returned in the dtype of the tensor they belong to.
#pragma once

#include <ATen/ATen.h>

#include <tuple>

namespace detr_ext {

at::Tensor ms_deform_attn_forward_cpu(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                      const at::Tensor& level_start_index,
                                      const at::Tensor& sampling_locations,
                                      const at::Tensor& attention_weights);

// Returns (grad_value, grad_sampling_locations, grad_attention_weights).
std::tuple<at::Tensor, at::Tensor, at::Tensor> ms_deform_attn_backward_cpu(
    const at::Tensor& grad_output, const at::Tensor& value, const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
    const at::Tensor& attention_weights);

#ifdef DETR_EXT_WITH_CUDA
at::Tensor ms_deform_attn_forward_cuda(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                       const at::Tensor& level_start_index,
                                       const at::Tensor& sampling_locations,
                                       const at::Tensor& attention_weights);

std::tuple<at::Tensor, at::Tensor, at::Tensor> ms_deform_attn_backward_cuda(
    const at::Tensor& grad_output, const at::Tensor& value, const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
    const at::Tensor& attention_weights);
#endif

// Checks done again in C++ so that a direct call of the op (bypassing the Python front) fails with
// a readable error instead of reading out of bounds. Cheap: metadata only, no device sync.
void check_ms_deform_attn_inputs(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                 const at::Tensor& level_start_index,
                                 const at::Tensor& sampling_locations,
                                 const at::Tensor& attention_weights);

}  // namespace detr_ext
