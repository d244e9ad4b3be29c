// Python module shiftnas._C. Loading it registers the shiftnas::ext_* operators (ops.cpp,
// cuda/*.cu); the functions below call the same checked implementations directly.
#include <torch/extension.h>

#include "ops.h"

namespace {

using namespace shiftnas;

constexpr const char* kForwardDoc = R"doc(
elastic_layer_norm_forward(x, weight, bias, active, eps) -> (y, mean, rstd)

LayerNorm of each row of x [N, C] over its first `active` channels, with
weight[:active] and bias[:active] (both [Cmax], same dtype as x).
y is [N, active] in x's dtype (always a fresh contiguous tensor); mean and
rstd are [N] float32 (float64 when x is float64). x may have padded rows
(stride(0) >= C); other layouts are copied. Requires 1 <= active <= min(C, Cmax).
)doc";

constexpr const char* kBackwardDoc = R"doc(
elastic_layer_norm_backward(grad_y, x, weight, mean, rstd, active)
    -> (grad_x, grad_weight, grad_bias)

Gradients of elastic_layer_norm_forward. grad_x has x's shape [N, C] (zero in
columns >= active); grad_weight and grad_bias have weight's shape [Cmax] (zero
past active) and dtype.
)doc";

constexpr const char* kDwconvForwardDoc = R"doc(
elastic_dwconv_forward(x, weight, bias, stride, padding) -> y

Depthwise conv of x [B, C, H, W] with the first C channels of weight
[Cmax, 1, k, k] and of bias [Cmax] (or None): F.conv2d(x, weight[:C],
bias[:C], stride, padding, 1, C). stride is 1 or 2. y is [B, C, Ho, Wo] in
x's dtype. x is used as NCHW (other layouts are copied); weight[:C] is read in
place.
)doc";

constexpr const char* kDwconvBackwardDoc = R"doc(
elastic_dwconv_backward(grad_y, x, weight, stride, padding, bias_size, output_mask)
    -> (grad_x, grad_weight, grad_bias)

Gradients of elastic_dwconv_forward; output_mask = (grad_x, grad_weight,
grad_bias) says which to compute, the others are None. grad_weight has
weight's full shape [Cmax, 1, k, k] and grad_bias is [bias_size], both zero
past C (weight's / x's dtype). Deterministic for any thread count.
)doc";

constexpr const char* kMaskDotDoc = R"doc(
mask_dot(y, dy, dim) -> out

out[c] = sum of y * dy over every dimension but `dim` (c < y.size(dim)):
what a mask multiplied along `dim` receives as its gradient. y and dy are
float32 or bfloat16 (the same), same shape, CPU; out is float32 [y.size(dim)],
accumulated in fp32 without a y-sized temporary. Non-contiguous inputs are
copied first. Deterministic for any thread count.
)doc";

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "shiftnas compiled ops (import through shiftnas._ext, not directly).";
  namespace py = pybind11;
  const auto release = py::call_guard<py::gil_scoped_release>();

  m.def(
      "elastic_layer_norm_forward",
      [](const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, int64_t active,
         double eps) { return layer_norm_op(x, weight, bias, active, eps, false); },
      py::arg("x"), py::arg("weight"), py::arg("bias"), py::arg("active"),
      py::arg("eps") = 1e-5, kForwardDoc, release);
  m.def(
      "elastic_layer_norm_backward",
      [](const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& weight,
         const at::Tensor& mean, const at::Tensor& rstd, int64_t active) {
        return layer_norm_backward_op(grad_y, x, weight, mean, rstd, active, false);
      },
      py::arg("grad_y"), py::arg("x"), py::arg("weight"), py::arg("mean"), py::arg("rstd"),
      py::arg("active"), kBackwardDoc, release);

#ifdef WITH_CUDA
  m.def(
      "elastic_layer_norm_forward_cuda",
      [](const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, int64_t active,
         double eps) { return layer_norm_op(x, weight, bias, active, eps, true); },
      py::arg("x"), py::arg("weight"), py::arg("bias"), py::arg("active"),
      py::arg("eps") = 1e-5, "CUDA variant of elastic_layer_norm_forward.", release);
  m.def(
      "elastic_layer_norm_backward_cuda",
      [](const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& weight,
         const at::Tensor& mean, const at::Tensor& rstd, int64_t active) {
        return layer_norm_backward_op(grad_y, x, weight, mean, rstd, active, true);
      },
      py::arg("grad_y"), py::arg("x"), py::arg("weight"), py::arg("mean"), py::arg("rstd"),
      py::arg("active"), "CUDA variant of elastic_layer_norm_backward.", release);
  m.attr("with_cuda") = true;
#else
  m.attr("with_cuda") = false;
#endif

  m.def(
      "elastic_dwconv_forward",
      [](const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
         int64_t stride, int64_t padding) {
        return dwconv_op(x, weight, bias, stride, padding, false);
      },
      py::arg("x"), py::arg("weight"), py::arg("bias"), py::arg("stride"), py::arg("padding"),
      kDwconvForwardDoc, release);
  m.def(
      "elastic_dwconv_backward",
      [](const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& weight, int64_t stride,
         int64_t padding, int64_t bias_size, std::array<bool, 3> output_mask) {
        return dwconv_backward_op(grad_y, x, weight, stride, padding, bias_size, output_mask,
                                       false);
      },
      py::arg("grad_y"), py::arg("x"), py::arg("weight"), py::arg("stride"), py::arg("padding"),
      py::arg("bias_size"), py::arg("output_mask"), kDwconvBackwardDoc, release);
#ifdef WITH_CUDA
  m.def(
      "elastic_dwconv_forward_cuda",
      [](const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
         int64_t stride, int64_t padding) {
        return dwconv_op(x, weight, bias, stride, padding, true);
      },
      py::arg("x"), py::arg("weight"), py::arg("bias"), py::arg("stride"), py::arg("padding"),
      "CUDA variant of elastic_dwconv_forward.", release);
  m.def(
      "elastic_dwconv_backward_cuda",
      [](const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& weight, int64_t stride,
         int64_t padding, int64_t bias_size, std::array<bool, 3> output_mask) {
        return dwconv_backward_op(grad_y, x, weight, stride, padding, bias_size, output_mask,
                                       true);
      },
      py::arg("grad_y"), py::arg("x"), py::arg("weight"), py::arg("stride"), py::arg("padding"),
      py::arg("bias_size"), py::arg("output_mask"), "CUDA variant of elastic_dwconv_backward.",
      release);
#endif
  m.def(
      "mask_dot",
      [](const at::Tensor& y, const at::Tensor& dy, int64_t dim) {
        return mask_dot_op(y, dy, dim);
      },
      py::arg("y"), py::arg("dy"), py::arg("dim"), kMaskDotDoc, release);
}
