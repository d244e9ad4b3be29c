// Python bindings for shiftnas._C. Argument validation lives here, once, so
// the CPU and CUDA implementations can assume well-formed inputs; every
// message names the offending argument and what was expected.
#include <torch/extension.h>

#include <cmath>

#include "elastic_layer_norm.h"

namespace {

using Result = std::tuple<at::Tensor, at::Tensor, at::Tensor>;

bool is_supported_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kBFloat16 || t == at::kHalf;
}

// The kernels need unit column stride and non-overlapping rows; anything
// else (e.g. a transposed view) is copied once here.
at::Tensor with_unit_col_stride(const at::Tensor& t) {
  const bool ok = t.stride(1) == 1 && (t.size(0) <= 1 || t.stride(0) >= t.size(1));
  return ok ? t : t.contiguous();
}

void check_device(const at::Tensor& t, const char* name, const at::Tensor& x, bool cuda,
                  const char* fn) {
  if (cuda) {
    TORCH_CHECK(t.is_cuda(), fn, ": ", name, " must be a CUDA tensor, got device ", t.device());
  } else {
    TORCH_CHECK(t.device().is_cpu(), fn, ": ", name, " must be a CPU tensor, got device ",
                t.device(), (t.is_cuda() ? " (use the *_cuda variant)" : ""));
  }
  TORCH_CHECK(t.device() == x.device(), fn, ": ", name, " must be on the same device as x (",
              x.device(), "), got ", t.device());
}

void check_x(const at::Tensor& x, const char* fn) {
  TORCH_CHECK(x.dim() == 2, fn, ": x must be a 2-D tensor [N, C], got a ", x.dim(),
              "-D tensor of shape ", x.sizes());
  TORCH_CHECK(is_supported_dtype(x.scalar_type()), fn,
              ": x must be float32, float64, bfloat16 or float16, got ", x.scalar_type());
}

void check_param(const at::Tensor& p, const char* name, const at::Tensor& x, int64_t active,
                 const char* fn) {
  TORCH_CHECK(p.dim() == 1, fn, ": ", name, " must be a 1-D tensor [Cmax], got shape ",
              p.sizes());
  TORCH_CHECK(p.scalar_type() == x.scalar_type(), fn, ": ", name,
              " must have the same dtype as x (", x.scalar_type(), "), got ", p.scalar_type());
  TORCH_CHECK(p.size(0) >= active, fn, ": ", name, " must have at least active=", active,
              " elements, got shape ", p.sizes());
}

void check_active(int64_t active, const at::Tensor& x, const char* fn) {
  TORCH_CHECK(active >= 1, fn, ": active must be >= 1, got ", active);
  TORCH_CHECK(active <= x.size(1), fn, ": active (", active,
              ") must be <= the channel count of x (x.size(1) = ", x.size(1), ")");
}

Result forward_checked(const at::Tensor& x_in, const at::Tensor& weight_in,
                       const at::Tensor& bias_in, int64_t active, double eps, bool cuda) {
  const char* fn = cuda ? "elastic_layer_norm_forward_cuda" : "elastic_layer_norm_forward";
  check_x(x_in, fn);
  check_active(active, x_in, fn);
  check_param(weight_in, "weight", x_in, active, fn);
  check_param(bias_in, "bias", x_in, active, fn);
  TORCH_CHECK(bias_in.size(0) == weight_in.size(0), fn,
              ": bias must have the same size as weight (", weight_in.size(0), "), got ",
              bias_in.size(0));
  TORCH_CHECK(std::isfinite(eps) && eps >= 0.0, fn,
              ": eps must be a finite non-negative float, got ", eps);
  check_device(weight_in, "weight", x_in, cuda, fn);
  check_device(bias_in, "bias", x_in, cuda, fn);
  check_device(x_in, "x", x_in, cuda, fn);

  const at::Tensor x = with_unit_col_stride(x_in);
  const at::Tensor weight = weight_in.contiguous();
  const at::Tensor bias = bias_in.contiguous();
#ifdef WITH_CUDA
  if (cuda) return shiftnas::elastic_layer_norm_forward_cuda(x, weight, bias, active, eps);
#endif
  return shiftnas::elastic_layer_norm_forward_cpu(x, weight, bias, active, eps);
}

Result backward_checked(const at::Tensor& grad_y_in, const at::Tensor& x_in,
                        const at::Tensor& weight_in, const at::Tensor& mean_in,
                        const at::Tensor& rstd_in, int64_t active, bool cuda) {
  const char* fn = cuda ? "elastic_layer_norm_backward_cuda" : "elastic_layer_norm_backward";
  check_x(x_in, fn);
  check_active(active, x_in, fn);
  check_param(weight_in, "weight", x_in, active, fn);
  const int64_t N = x_in.size(0);
  TORCH_CHECK(grad_y_in.dim() == 2 && grad_y_in.size(0) == N && grad_y_in.size(1) == active, fn,
              ": grad_y must have shape [N, active] = [", N, ", ", active, "], got ",
              grad_y_in.sizes());
  TORCH_CHECK(grad_y_in.scalar_type() == x_in.scalar_type(), fn,
              ": grad_y must have the same dtype as x (", x_in.scalar_type(), "), got ",
              grad_y_in.scalar_type());
  for (const auto& [t, name] : {std::pair<const at::Tensor&, const char*>{mean_in, "mean"},
                                std::pair<const at::Tensor&, const char*>{rstd_in, "rstd"}}) {
    TORCH_CHECK(t.dim() == 1 && t.size(0) == N, fn, ": ", name, " must have shape [N] = [", N,
                "] (as returned by the forward), got ", t.sizes());
    TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, fn, ": ", name,
                " must be float32 or float64, got ", t.scalar_type());
    check_device(t, name, x_in, cuda, fn);
  }
  check_device(grad_y_in, "grad_y", x_in, cuda, fn);
  check_device(weight_in, "weight", x_in, cuda, fn);
  check_device(x_in, "x", x_in, cuda, fn);

  const at::Tensor grad_y = with_unit_col_stride(grad_y_in);
  const at::Tensor x = with_unit_col_stride(x_in);
  const at::Tensor weight = weight_in.contiguous();
#ifdef WITH_CUDA
  if (cuda) {
    return shiftnas::elastic_layer_norm_backward_cuda(grad_y, x, weight, mean_in, rstd_in,
                                                      active);
  }
#endif
  return shiftnas::elastic_layer_norm_backward_cpu(grad_y, x, weight, mean_in, rstd_in, active);
}

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

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "shiftnas compiled ops (import through shiftnas._ext, not directly).";
  namespace py = pybind11;
  const auto release = py::call_guard<py::gil_scoped_release>();

  m.def(
      "elastic_layer_norm_forward",
      [](const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, int64_t active,
         double eps) { return forward_checked(x, weight, bias, active, eps, false); },
      py::arg("x"), py::arg("weight"), py::arg("bias"), py::arg("active"),
      py::arg("eps") = 1e-5, kForwardDoc, release);
  m.def(
      "elastic_layer_norm_backward",
      [](const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& weight,
         const at::Tensor& mean, const at::Tensor& rstd, int64_t active) {
        return backward_checked(grad_y, x, weight, mean, rstd, active, false);
      },
      py::arg("grad_y"), py::arg("x"), py::arg("weight"), py::arg("mean"), py::arg("rstd"),
      py::arg("active"), kBackwardDoc, release);

#ifdef WITH_CUDA
  m.def(
      "elastic_layer_norm_forward_cuda",
      [](const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, int64_t active,
         double eps) { return forward_checked(x, weight, bias, active, eps, true); },
      py::arg("x"), py::arg("weight"), py::arg("bias"), py::arg("active"),
      py::arg("eps") = 1e-5, "CUDA variant of elastic_layer_norm_forward.", release);
  m.def(
      "elastic_layer_norm_backward_cuda",
      [](const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& weight,
         const at::Tensor& mean, const at::Tensor& rstd, int64_t active) {
        return backward_checked(grad_y, x, weight, mean, rstd, active, true);
      },
      py::arg("grad_y"), py::arg("x"), py::arg("weight"), py::arg("mean"), py::arg("rstd"),
      py::arg("active"), "CUDA variant of elastic_layer_norm_backward.", release);
  m.attr("with_cuda") = true;
#else
  m.attr("with_cuda") = false;
#endif
}
