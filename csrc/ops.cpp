// The shiftnas::ext_* operators (contract in ops.h): their schemas, argument validation, the CPU
// kernels and the autograd, registered with the dispatcher when shiftnas._C is loaded. The CUDA
// kernels are registered in cuda/*.cu (CUDA builds only); the fake (meta) implementations in
// Python (shiftnas/ops/*_ext.py, named below by m.set_python_module).
//
// Validation lives here, once, so the CPU and CUDA implementations can assume well-formed
// inputs; every message names the op, the offending argument and what was expected.
//
// Autograd follows torchvision's C++ ops: a torch::autograd::Function per differentiable op,
// registered for the Autograd key; its forward calls the op again below autograd (so the
// dispatcher picks the CPU, CUDA or fake kernel), its backward calls the *_backward op.
#include "ops.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/csrc/autograd/autograd_not_implemented_fallback.h>
#include <torch/library.h>

#include <cmath>

#include "elastic_dwconv.h"
#include "elastic_layer_norm.h"
#include "mask_dot.h"

namespace shiftnas {
namespace {

using Result = std::tuple<at::Tensor, at::Tensor, at::Tensor>;

const char* op_name(const char* cpu_name, const char* cuda_name, bool cuda) {
  return cuda ? cuda_name : cpu_name;
}

bool is_supported_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kBFloat16 || t == at::kHalf;
}

// The kernels need unit column stride and non-overlapping rows; anything
// else (e.g. a transposed view) is copied once here.
at::Tensor with_unit_col_stride(const at::Tensor& t) {
  const bool ok = t.stride(1) == 1 && (t.size(0) <= 1 || t.stride(0) >= t.size(1));
  return ok ? t : t.contiguous();
}

// The dispatcher sends a call with any CUDA tensor to the CUDA kernel, so a CPU kernel sees CPU
// tensors only; the CUDA kernel may be handed a CPU tensor beside CUDA ones.
void check_device(const at::Tensor& t, const char* name, const at::Tensor& x, bool cuda,
                  const char* fn) {
  if (cuda) {
    TORCH_CHECK(t.is_cuda(), fn, ": ", name, " must be a CUDA tensor, got device ", t.device());
  } else {
    TORCH_CHECK(t.device().is_cpu(), fn, ": ", name, " must be a CPU tensor, got device ",
                t.device());
  }
  TORCH_CHECK(t.device() == x.device(), fn, ": ", name, " must be on the same device as x (",
              x.device(), "), got ", t.device());
}

// --- elastic LayerNorm -------------------------------------------------------------------------

void check_ln_x(const at::Tensor& x, int64_t active, const char* fn) {
  TORCH_CHECK(x.dim() >= 1, fn, ": x must have at least one dimension [..., C], got a 0-D tensor");
  TORCH_CHECK(is_supported_dtype(x.scalar_type()), fn,
              ": x must be float32, float64, bfloat16 or float16, got ", x.scalar_type());
  TORCH_CHECK(active >= 1, fn, ": active must be >= 1, got ", active);
  TORCH_CHECK(active <= x.size(-1), fn, ": active (", active,
              ") must be <= the channel count of x (x.size(-1) = ", x.size(-1), ")");
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

// x's leading dimensions with `last` as the last one.
std::vector<int64_t> with_last(const at::Tensor& x, int64_t last) {
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = last;
  return shape;
}

}  // namespace

Result layer_norm_op(const at::Tensor& x_in, const at::Tensor& weight_in,
                     const at::Tensor& bias_in, int64_t active, double eps, bool cuda) {
  const char* fn = op_name("shiftnas::ext_layer_norm", "shiftnas::ext_layer_norm (CUDA)", cuda);
  check_ln_x(x_in, active, fn);
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

  // [..., C] as rows [N, C]: a view for contiguous or row-padded x.
  const at::Tensor x = with_unit_col_stride(x_in.reshape({-1, x_in.size(-1)}));
  const at::Tensor weight = weight_in.contiguous();
  const at::Tensor bias = bias_in.contiguous();
  Result out;
#ifdef WITH_CUDA
  if (cuda) {
    out = elastic_layer_norm_forward_cuda(x, weight, bias, active, eps);
  } else
#endif
  {
    out = elastic_layer_norm_forward_cpu(x, weight, bias, active, eps);
  }
  std::get<0>(out) = std::get<0>(out).view(with_last(x_in, active));
  return out;
}

Result layer_norm_backward_op(const at::Tensor& grad_y_in, const at::Tensor& x_in,
                              const at::Tensor& weight_in, const at::Tensor& mean_in,
                              const at::Tensor& rstd_in, int64_t active, bool cuda) {
  const char* fn = op_name("shiftnas::ext_layer_norm_backward",
                           "shiftnas::ext_layer_norm_backward (CUDA)", cuda);
  check_ln_x(x_in, active, fn);
  check_param(weight_in, "weight", x_in, active, fn);
  const int64_t N = x_in.numel() / std::max<int64_t>(x_in.size(-1), 1);
  TORCH_CHECK(grad_y_in.sizes() == at::IntArrayRef(with_last(x_in, active)), fn,
              ": grad_y must have shape [..., active] = ", at::IntArrayRef(with_last(x_in, active)),
              " (x's leading dimensions), got ", grad_y_in.sizes());
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

  const at::Tensor grad_y = with_unit_col_stride(grad_y_in.reshape({-1, active}));
  const at::Tensor x = with_unit_col_stride(x_in.reshape({-1, x_in.size(-1)}));
  const at::Tensor weight = weight_in.contiguous();
  Result out;
#ifdef WITH_CUDA
  if (cuda) {
    out = elastic_layer_norm_backward_cuda(grad_y, x, weight, mean_in, rstd_in, active);
  } else
#endif
  {
    out = elastic_layer_norm_backward_cpu(grad_y, x, weight, mean_in, rstd_in, active);
  }
  std::get<0>(out) = std::get<0>(out).view(x_in.sizes());
  return out;
}

// --- elastic depthwise conv --------------------------------------------------------------------

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

}  // namespace

at::Tensor dwconv_op(const at::Tensor& x_in, const at::Tensor& weight_in,
                     const std::optional<at::Tensor>& bias_in, int64_t stride, int64_t padding,
                     bool cuda) {
  const char* fn = op_name("shiftnas::ext_dwconv", "shiftnas::ext_dwconv (CUDA)", cuda);
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
  if (cuda) return elastic_dwconv_forward_cuda(x, weight, bias, stride, padding);
#endif
  return elastic_dwconv_forward_cpu(x, weight, bias, stride, padding);
}

Result dwconv_backward_op(const at::Tensor& grad_y_in, const at::Tensor& x_in,
                          const at::Tensor& weight_in, int64_t stride, int64_t padding,
                          int64_t bias_size, std::array<bool, 3> output_mask, bool cuda) {
  const char* fn =
      op_name("shiftnas::ext_dwconv_backward", "shiftnas::ext_dwconv_backward (CUDA)", cuda);
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
    return elastic_dwconv_backward_cuda(grad_y, x, weight, stride, padding, bias_size,
                                        output_mask);
  }
#endif
  return elastic_dwconv_backward_cpu(grad_y, x, weight, stride, padding, bias_size, output_mask);
}

// --- mask dot (the prefix-path mask tap's gradient) ------------------------------------------

at::Tensor mask_dot_op(const at::Tensor& y_in, const at::Tensor& dy_in, int64_t dim) {
  const char* fn = "shiftnas::ext_mask_dot";
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
  return mask_dot_cpu(y_in.contiguous(), dy_in.contiguous(), dim < 0 ? dim + y_in.dim() : dim);
}

// --- autograd ----------------------------------------------------------------------------------

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::Variable;
using torch::autograd::variable_list;

using LayerNormSig = Result(const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t,
                            double);
using LayerNormBackwardSig = Result(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                    const at::Tensor&, const at::Tensor&, int64_t);
using DWConvSig = at::Tensor(const at::Tensor&, const at::Tensor&,
                             const std::optional<at::Tensor>&, int64_t, int64_t);
using DWConvBackwardSig = Result(const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t,
                                 int64_t, int64_t, std::array<bool, 3>);
using MaskDotSig = at::Tensor(const at::Tensor&, const at::Tensor&, int64_t);

// The op's dispatcher handle, looked up once.
template <typename Sig>
c10::TypedOperatorHandle<Sig> handle(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Sig>();
}

class LayerNormFunction : public torch::autograd::Function<LayerNormFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const Variable& x, const Variable& weight,
                               const Variable& bias, int64_t active, double eps) {
    static const auto op = handle<LayerNormSig>("shiftnas::ext_layer_norm");
    at::AutoDispatchBelowADInplaceOrView below;
    auto [y, mean, rstd] = op.call(x, weight, bias, active, eps);
    ctx->save_for_backward({x, weight, mean, rstd});
    ctx->saved_data["active"] = active;
    ctx->mark_non_differentiable({mean, rstd});
    return {y, mean, rstd};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto op = handle<LayerNormBackwardSig>("shiftnas::ext_layer_norm_backward");
    const auto saved = ctx->get_saved_variables();
    auto [gx, gw, gb] = op.call(grads[0], saved[0], saved[1], saved[2], saved[3],
                                ctx->saved_data["active"].toInt());
    return {gx, gw, gb, Variable(), Variable()};
  }
};

class DWConvFunction : public torch::autograd::Function<DWConvFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const Variable& x, const Variable& weight,
                               const std::optional<Variable>& bias, int64_t stride,
                               int64_t padding) {
    static const auto op = handle<DWConvSig>("shiftnas::ext_dwconv");
    at::AutoDispatchBelowADInplaceOrView below;
    at::Tensor y = op.call(x, weight, bias, stride, padding);
    ctx->save_for_backward({x, weight});
    const bool has_bias = bias.has_value() && bias->defined();
    ctx->saved_data["stride"] = stride;
    ctx->saved_data["padding"] = padding;
    ctx->saved_data["bias_size"] = has_bias ? bias->size(0) : int64_t{0};
    return {y};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto op = handle<DWConvBackwardSig>("shiftnas::ext_dwconv_backward");
    const auto saved = ctx->get_saved_variables();
    const int64_t bias_size = ctx->saved_data["bias_size"].toInt();
    // needs_input_grad counts the tensor inputs only: bias is the third when it is not None.
    const std::array<bool, 3> mask = {ctx->needs_input_grad(0), ctx->needs_input_grad(1),
                                      bias_size > 0 && ctx->needs_input_grad(2)};
    if (!(mask[0] || mask[1] || mask[2])) return {Variable(), Variable(), Variable(), Variable(), Variable()};
    auto [gx, gw, gb] = op.call(grads[0], saved[0], saved[1], ctx->saved_data["stride"].toInt(),
                                ctx->saved_data["padding"].toInt(), bias_size, mask);
    return {gx, gw, gb, Variable(), Variable()};
  }
};

class MaskDotFunction : public torch::autograd::Function<MaskDotFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const Variable& y, const Variable& dy,
                               int64_t dim) {
    static const auto op = handle<MaskDotSig>("shiftnas::ext_mask_dot");
    at::AutoDispatchBelowADInplaceOrView below;
    at::Tensor out = op.call(y, dy, dim);
    ctx->save_for_backward({y, dy});
    ctx->saved_data["dim"] = dim;
    return {out};
  }

  // d y = g * dy, d dy = g * y, g broadcast along `dim`; in y's / dy's dtype.
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& y = saved[0];
    const at::Tensor& dy = saved[1];
    int64_t dim = ctx->saved_data["dim"].toInt();
    if (dim < 0) dim += y.dim();
    std::vector<int64_t> shape(y.dim(), 1);
    shape[dim] = -1;
    const at::Tensor g = grads[0].view(shape);
    Variable gy, gdy;
    if (ctx->needs_input_grad(0)) gy = g.mul(dy).to(y.scalar_type());
    if (ctx->needs_input_grad(1)) gdy = g.mul(y).to(dy.scalar_type());
    return {gy, gdy, Variable()};
  }
};

// Without grad mode or an input requiring grad there is no graph to record: the op runs below
// autograd straight away (as Function::apply would, minus its bookkeeping).
bool wants_grad(const at::Tensor& t) { return t.defined() && t.requires_grad(); }
bool wants_grad(const std::optional<at::Tensor>& t) { return t.has_value() && wants_grad(*t); }

template <typename... Tensors>
bool records_graph(const Tensors&... inputs) {
  return at::GradMode::is_enabled() && (wants_grad(inputs) || ...);
}

Result layer_norm_autograd(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                           int64_t active, double eps) {
  if (!records_graph(x, weight, bias)) {
    static const auto op = handle<LayerNormSig>("shiftnas::ext_layer_norm");
    at::AutoDispatchBelowADInplaceOrView below;
    return op.call(x, weight, bias, active, eps);
  }
  auto out = LayerNormFunction::apply(x, weight, bias, active, eps);
  return {out[0], out[1], out[2]};
}

at::Tensor dwconv_autograd(const at::Tensor& x, const at::Tensor& weight,
                           const std::optional<at::Tensor>& bias, int64_t stride,
                           int64_t padding) {
  if (!records_graph(x, weight, bias)) {
    static const auto op = handle<DWConvSig>("shiftnas::ext_dwconv");
    at::AutoDispatchBelowADInplaceOrView below;
    return op.call(x, weight, bias, stride, padding);
  }
  return DWConvFunction::apply(x, weight, bias, stride, padding)[0];
}

at::Tensor mask_dot_autograd(const at::Tensor& y, const at::Tensor& dy, int64_t dim) {
  if (!records_graph(y, dy)) {
    static const auto op = handle<MaskDotSig>("shiftnas::ext_mask_dot");
    at::AutoDispatchBelowADInplaceOrView below;
    return op.call(y, dy, dim);
  }
  return MaskDotFunction::apply(y, dy, dim)[0];
}

}  // namespace
}  // namespace shiftnas

// --- registration --------------------------------------------------------------------------------

// One TORCH_LIBRARY per namespace and process: the Triton ops of shiftnas.kernels add theirs to
// the same namespace from Python (torch.library.custom_op registers FRAGMENTs).
TORCH_LIBRARY(shiftnas, m) {
  const std::vector<at::Tag> tags = {at::Tag::pt2_compliant_tag};
  m.set_python_module("shiftnas.ops.layer_norm_ext");
  m.def("ext_layer_norm(Tensor x, Tensor weight, Tensor bias, int active, float eps) -> "
        "(Tensor, Tensor, Tensor)",
        tags);
  m.def("ext_layer_norm_backward(Tensor grad_y, Tensor x, Tensor weight, Tensor mean, "
        "Tensor rstd, int active) -> (Tensor, Tensor, Tensor)",
        tags);
  m.set_python_module("shiftnas.ops.dwconv_ext");
  m.def("ext_dwconv(Tensor x, Tensor weight, Tensor? bias, int stride, int padding) -> Tensor",
        tags);
  m.def("ext_dwconv_backward(Tensor grad_y, Tensor x, Tensor weight, int stride, int padding, "
        "int bias_size, bool[3] output_mask) -> (Tensor, Tensor, Tensor)",
        tags);
  m.set_python_module("shiftnas.ops.mask_dot_ext");
  m.def("ext_mask_dot(Tensor y, Tensor dy, int dim) -> Tensor", tags);
}

TORCH_LIBRARY_IMPL(shiftnas, CPU, m) {
  m.impl("ext_layer_norm", [](const at::Tensor& x, const at::Tensor& weight,
                              const at::Tensor& bias, int64_t active, double eps) {
    return shiftnas::layer_norm_op(x, weight, bias, active, eps, false);
  });
  m.impl("ext_layer_norm_backward",
         [](const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& weight,
            const at::Tensor& mean, const at::Tensor& rstd, int64_t active) {
           return shiftnas::layer_norm_backward_op(grad_y, x, weight, mean, rstd, active, false);
         });
  m.impl("ext_dwconv", [](const at::Tensor& x, const at::Tensor& weight,
                          const std::optional<at::Tensor>& bias, int64_t stride, int64_t padding) {
    return shiftnas::dwconv_op(x, weight, bias, stride, padding, false);
  });
  m.impl("ext_dwconv_backward",
         [](const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& weight,
            int64_t stride, int64_t padding, int64_t bias_size, std::array<bool, 3> output_mask) {
           return shiftnas::dwconv_backward_op(grad_y, x, weight, stride, padding, bias_size,
                                               output_mask, false);
         });
  m.impl("ext_mask_dot", TORCH_FN(shiftnas::mask_dot_op));
}

TORCH_LIBRARY_IMPL(shiftnas, Autograd, m) {
  m.impl("ext_layer_norm", TORCH_FN(shiftnas::layer_norm_autograd));
  m.impl("ext_dwconv", TORCH_FN(shiftnas::dwconv_autograd));
  m.impl("ext_mask_dot", TORCH_FN(shiftnas::mask_dot_autograd));
  // No double backward: with grad mode on, these record a node that raises if it is reached.
  m.impl("ext_layer_norm_backward", torch::autograd::autogradNotImplementedFallback());
  m.impl("ext_dwconv_backward", torch::autograd::autogradNotImplementedFallback());
}
