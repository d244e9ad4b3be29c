// Python bindings for shiftnas._C. Argument validation lives here, once, so
// the CPU and CUDA implementations can assume well-formed inputs; every
// message names the offending argument and what was expected.
#include <torch/extension.h>

#include <cmath>

#include "elastic_dwconv.h"
#include "elastic_layer_norm.h"
#include "mask_dot.h"

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

// --- elastic depthwise conv --------------------------------------------------

namespace {

void check_dwconv_args(const at::Tensor& x, const at::Tensor& weight, int64_t stride,
                       int64_t padding, const char* fn) {
  TORCH_CHECK(x.dim() == 4, fn, ": x must be a 4-D tensor [B, C, H, W], got a ", x.dim(),
              "-D tensor of shape ", x.sizes());
  TORCH_CHECK(is_supported_dtype(x.scalar_type()), fn,
              ": x must be float32, float64, bfloat16 or float16, got ", x.scalar_type());
  TORCH_CHECK(x.size(1) >= 1, fn, ": x must have at least one channel, got shape ", x.sizes());
  TORCH_CHECK(weight.dim() == 4 && weight.size(1) == 1, fn,
              ": weight must be a depthwise weight [Cmax, 1, k, k], got shape ", weight.sizes());
  TORCH_CHECK(weight.size(2) == weight.size(3) && weight.size(2) >= 1, fn,
              ": weight must have a square k x k kernel with k >= 1, got shape ", weight.sizes());
  TORCH_CHECK(weight.size(0) >= x.size(1), fn, ": weight must have at least C=", x.size(1),
              " channels (x.size(1)), got shape ", weight.sizes());
  TORCH_CHECK(weight.scalar_type() == x.scalar_type(), fn,
              ": weight must have the same dtype as x (", x.scalar_type(), "), got ",
              weight.scalar_type());
  TORCH_CHECK(stride == 1 || stride == 2, fn, ": stride must be 1 or 2, got ", stride);
  TORCH_CHECK(padding >= 0 && padding <= 64, fn, ": padding must be in [0, 64], got ", padding);
  const int64_t k = weight.size(2);
  TORCH_CHECK(x.size(2) + 2 * padding >= k && x.size(3) + 2 * padding >= k, fn,
              ": x's spatial size ", x.size(2), "x", x.size(3), " with padding ", padding,
              " is smaller than the kernel (k=", k, ")");
}

at::Tensor dwconv_forward_checked(const at::Tensor& x_in, const at::Tensor& weight_in,
                                  const std::optional<at::Tensor>& bias_in, int64_t stride,
                                  int64_t padding, bool cuda) {
  const char* fn = cuda ? "elastic_dwconv_forward_cuda" : "elastic_dwconv_forward";
  check_dwconv_args(x_in, weight_in, stride, padding, fn);
  const int64_t C = x_in.size(1);
  at::Tensor bias;
  if (bias_in.has_value() && bias_in->defined()) {
    const at::Tensor& b = *bias_in;
    TORCH_CHECK(b.dim() == 1, fn, ": bias must be None or a 1-D tensor [Cmax], got shape ",
                b.sizes());
    TORCH_CHECK(b.size(0) >= C, fn, ": bias must have at least C=", C,
                " elements (x.size(1)), got shape ", b.sizes());
    TORCH_CHECK(b.scalar_type() == x_in.scalar_type(), fn, ": bias must have the same dtype as x (",
                x_in.scalar_type(), "), got ", b.scalar_type());
    check_device(b, "bias", x_in, cuda, fn);
    bias = b.contiguous();
  }
  check_device(weight_in, "weight", x_in, cuda, fn);
  check_device(x_in, "x", x_in, cuda, fn);

  // NCHW; a channels_last or otherwise strided x is copied once here. A
  // contiguous weight (the usual [Cmax, 1, k, k] parameter) is used in place.
  const at::Tensor x = x_in.contiguous();
  const at::Tensor weight = weight_in.contiguous();
#ifdef WITH_CUDA
  if (cuda) return shiftnas::elastic_dwconv_forward_cuda(x, weight, bias, stride, padding);
#endif
  return shiftnas::elastic_dwconv_forward_cpu(x, weight, bias, stride, padding);
}

Result dwconv_backward_checked(const at::Tensor& grad_y_in, const at::Tensor& x_in,
                               const at::Tensor& weight_in, int64_t stride, int64_t padding,
                               int64_t bias_size, std::array<bool, 3> output_mask, bool cuda) {
  const char* fn = cuda ? "elastic_dwconv_backward_cuda" : "elastic_dwconv_backward";
  check_dwconv_args(x_in, weight_in, stride, padding, fn);
  const int64_t B = x_in.size(0), C = x_in.size(1), k = weight_in.size(2);
  const int64_t Ho = (x_in.size(2) + 2 * padding - k) / stride + 1;
  const int64_t Wo = (x_in.size(3) + 2 * padding - k) / stride + 1;
  TORCH_CHECK(grad_y_in.dim() == 4 && grad_y_in.size(0) == B && grad_y_in.size(1) == C &&
                  grad_y_in.size(2) == Ho && grad_y_in.size(3) == Wo,
              fn, ": grad_y must have the forward output's shape [B, C, Ho, Wo] = [", B, ", ", C,
              ", ", Ho, ", ", Wo, "], got ", grad_y_in.sizes());
  TORCH_CHECK(grad_y_in.scalar_type() == x_in.scalar_type(), fn,
              ": grad_y must have the same dtype as x (", x_in.scalar_type(), "), got ",
              grad_y_in.scalar_type());
  TORCH_CHECK(!output_mask[2] || bias_size >= C, fn, ": bias_size must be >= C=", C,
              " when grad_bias is requested (output_mask[2]), got ", bias_size);
  check_device(grad_y_in, "grad_y", x_in, cuda, fn);
  check_device(weight_in, "weight", x_in, cuda, fn);
  check_device(x_in, "x", x_in, cuda, fn);

  const at::Tensor grad_y = grad_y_in.contiguous();
  const at::Tensor x = x_in.contiguous();
  const at::Tensor weight = weight_in.contiguous();
#ifdef WITH_CUDA
  if (cuda) {
    return shiftnas::elastic_dwconv_backward_cuda(grad_y, x, weight, stride, padding, bias_size,
                                                  output_mask);
  }
#endif
  return shiftnas::elastic_dwconv_backward_cpu(grad_y, x, weight, stride, padding, bias_size,
                                               output_mask);
}

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

}  // namespace

// --- mask dot (the prefix-path mask tap's gradient) ----------------------------

namespace {

at::Tensor mask_dot_checked(const at::Tensor& y_in, const at::Tensor& dy_in, int64_t dim) {
  const char* fn = "mask_dot";
  TORCH_CHECK(y_in.dim() >= 1, fn, ": y must have at least one dimension, got a 0-D tensor");
  TORCH_CHECK(dim >= -y_in.dim() && dim < y_in.dim(), fn, ": dim must be in [", -y_in.dim(),
              ", ", y_in.dim(), ") for y of shape ", y_in.sizes(), ", got ", dim);
  TORCH_CHECK(y_in.scalar_type() == at::kFloat || y_in.scalar_type() == at::kBFloat16, fn,
              ": y must be float32 or bfloat16, got ", y_in.scalar_type());
  TORCH_CHECK(dy_in.scalar_type() == y_in.scalar_type(), fn,
              ": dy must have the same dtype as y (", y_in.scalar_type(), "), got ",
              dy_in.scalar_type());
  TORCH_CHECK(dy_in.sizes() == y_in.sizes(), fn, ": dy must have y's shape ", y_in.sizes(),
              ", got ", dy_in.sizes());
  check_device(dy_in, "dy", y_in, false, fn);
  check_device(y_in, "y", y_in, false, fn);
  // Read as [outer, C, inner] in memory order; any other layout is copied once here.
  return shiftnas::mask_dot_cpu(y_in.contiguous(), dy_in.contiguous(),
                                dim < 0 ? dim + y_in.dim() : dim);
}

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

  m.def(
      "elastic_dwconv_forward",
      [](const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
         int64_t stride, int64_t padding) {
        return dwconv_forward_checked(x, weight, bias, stride, padding, false);
      },
      py::arg("x"), py::arg("weight"), py::arg("bias"), py::arg("stride"), py::arg("padding"),
      kDwconvForwardDoc, release);
  m.def(
      "elastic_dwconv_backward",
      [](const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& weight, int64_t stride,
         int64_t padding, int64_t bias_size, std::array<bool, 3> output_mask) {
        return dwconv_backward_checked(grad_y, x, weight, stride, padding, bias_size, output_mask,
                                       false);
      },
      py::arg("grad_y"), py::arg("x"), py::arg("weight"), py::arg("stride"), py::arg("padding"),
      py::arg("bias_size"), py::arg("output_mask"), kDwconvBackwardDoc, release);
#ifdef WITH_CUDA
  m.def(
      "elastic_dwconv_forward_cuda",
      [](const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
         int64_t stride, int64_t padding) {
        return dwconv_forward_checked(x, weight, bias, stride, padding, true);
      },
      py::arg("x"), py::arg("weight"), py::arg("bias"), py::arg("stride"), py::arg("padding"),
      "CUDA variant of elastic_dwconv_forward.", release);
  m.def(
      "elastic_dwconv_backward_cuda",
      [](const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& weight, int64_t stride,
         int64_t padding, int64_t bias_size, std::array<bool, 3> output_mask) {
        return dwconv_backward_checked(grad_y, x, weight, stride, padding, bias_size, output_mask,
                                       true);
      },
      py::arg("grad_y"), py::arg("x"), py::arg("weight"), py::arg("stride"), py::arg("padding"),
      py::arg("bias_size"), py::arg("output_mask"), "CUDA variant of elastic_dwconv_backward.",
      release);
#endif
  m.def(
      "mask_dot",
      [](const at::Tensor& y, const at::Tensor& dy, int64_t dim) {
        return mask_dot_checked(y, dy, dim);
      },
      py::arg("y"), py::arg("dy"), py::arg("dim"), kMaskDotDoc, release);
}
