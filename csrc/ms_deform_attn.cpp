// Schema of the detr_ext operators and the shape checks shared by the CPU and CUDA kernels.
// The Python front (detr_ext/ops/ms_deform_attn.py) validates inputs with friendlier messages
// first; these checks keep a direct `torch.ops.detr_ext.*` call from ever reading out of bounds.
#include "ms_deform_attn.h"

#include <Python.h>
#include <torch/library.h>

#include <string>

namespace detr_ext {

void check_ms_deform_attn_inputs(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                 const at::Tensor& level_start_index,
                                 const at::Tensor& sampling_locations,
                                 const at::Tensor& attention_weights) {
  TORCH_CHECK(value.dim() == 4, "ms_deform_attn: expected value of shape [B, N, H, C], got ",
              value.sizes());
  TORCH_CHECK(spatial_shapes.dim() == 2 && spatial_shapes.size(1) == 2,
              "ms_deform_attn: expected spatial_shapes of shape [L, 2], got ",
              spatial_shapes.sizes());
  const int64_t L = spatial_shapes.size(0);
  TORCH_CHECK(L > 0, "ms_deform_attn: expected at least one level, got spatial_shapes of shape ",
              spatial_shapes.sizes());
  TORCH_CHECK(level_start_index.dim() == 1 && level_start_index.size(0) == L,
              "ms_deform_attn: expected level_start_index of shape [", L, "], got ",
              level_start_index.sizes());
  TORCH_CHECK(spatial_shapes.scalar_type() == at::kLong &&
                  level_start_index.scalar_type() == at::kLong,
              "ms_deform_attn: expected int64 spatial_shapes and level_start_index, got ",
              spatial_shapes.scalar_type(), " and ", level_start_index.scalar_type());
  const int64_t B = value.size(0), H = value.size(2);
  TORCH_CHECK(sampling_locations.dim() == 6 && sampling_locations.size(0) == B &&
                  sampling_locations.size(2) == H && sampling_locations.size(3) == L &&
                  sampling_locations.size(5) == 2,
              "ms_deform_attn: expected sampling_locations of shape [", B, ", Q, ", H, ", ", L,
              ", P, 2], got ", sampling_locations.sizes());
  const int64_t Q = sampling_locations.size(1), P = sampling_locations.size(4);
  TORCH_CHECK(attention_weights.dim() == 5 && attention_weights.size(0) == B &&
                  attention_weights.size(1) == Q && attention_weights.size(2) == H &&
                  attention_weights.size(3) == L && attention_weights.size(4) == P,
              "ms_deform_attn: expected attention_weights of shape [", B, ", ", Q, ", ", H, ", ",
              L, ", ", P, "], got ", attention_weights.sizes());
  TORCH_CHECK(sampling_locations.scalar_type() == attention_weights.scalar_type(),
              "ms_deform_attn: expected sampling_locations and attention_weights of one dtype, got ",
              sampling_locations.scalar_type(), " and ", attention_weights.scalar_type());
  const auto value_dtype = value.scalar_type();
  const auto coord_dtype = sampling_locations.scalar_type();
  const bool reduced = value_dtype == at::kHalf || value_dtype == at::kBFloat16;
  TORCH_CHECK(value_dtype == at::kDouble || value_dtype == at::kFloat || reduced,
              "ms_deform_attn: expected value of dtype float64, float32, float16 or bfloat16, got ",
              value_dtype);
  TORCH_CHECK(coord_dtype == value_dtype || (reduced && coord_dtype == at::kFloat),
              "ms_deform_attn: expected sampling_locations/attention_weights of dtype ",
              value_dtype, reduced ? " or float32" : "", ", got ", coord_dtype);
  const auto device = value.device();
  for (const at::Tensor* tensor :
       {&spatial_shapes, &level_start_index, &sampling_locations, &attention_weights}) {
    TORCH_CHECK(tensor->device() == device,
                "ms_deform_attn: expected all inputs on the device of value (", device,
                "), got one on ", tensor->device());
  }
}

namespace {
std::string build_info() {
  std::string info = "cpu";
#ifdef DETR_EXT_WITH_CUDA
  info += ";cuda";
#endif
  return info;
}
}  // namespace

TORCH_LIBRARY(detr_ext, m) {
  m.def(
      "ms_deform_attn(Tensor value, Tensor spatial_shapes, Tensor level_start_index, "
      "Tensor sampling_locations, Tensor attention_weights) -> Tensor");
  m.def(
      "ms_deform_attn_backward(Tensor grad_output, Tensor value, Tensor spatial_shapes, "
      "Tensor level_start_index, Tensor sampling_locations, Tensor attention_weights) "
      "-> (Tensor, Tensor, Tensor)");
  // The gradients as a graph, for backward(create_graph=True) (ms_deform_attn_autograd.cpp);
  // implemented by the Python front with the PyTorch path. output_mask: which of value,
  // sampling_locations, attention_weights need one (the others come back as zeros).
  m.def(
      "ms_deform_attn_grad_graph(Tensor grad_output, Tensor value, Tensor spatial_shapes, "
      "Tensor level_start_index, Tensor sampling_locations, Tensor attention_weights, "
      "bool[3] output_mask) -> (Tensor, Tensor, Tensor)");
  m.def("build_info() -> str", &build_info);
}

}  // namespace detr_ext

// `import detr_ext._C` only has to load this library so that the registrations above run; the
// operators are then reached through torch.ops.detr_ext.
extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
