// Host-side helpers shared by the CPU (*.cpp) and CUDA (cuda/*.cu) kernels of
// elastic_dwconv and elastic_layer_norm (internal; not part of the
// extension's interface).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace shiftnas {

// The accumulation dtype of a kernel: float64 for float64 inputs, float32
// otherwise (float16/bfloat16/float32).
inline at::ScalarType acc_dtype(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

// Row stride of a 2-D [rows, cols] tensor with unit column stride; a single
// row may report any stride(0), so its width is used instead.
inline int64_t row_stride(const at::Tensor& t) {
  return t.size(0) > 1 ? t.stride(0) : t.size(1);
}

}  // namespace shiftnas
