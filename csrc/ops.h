// The operators shiftnas._C registers with the PyTorch dispatcher when it is loaded (ops.cpp:
// TORCH_LIBRARY(shiftnas, ...) with the schemas, the CPU kernels and the autograd; the CUDA
// kernels in cuda/*.cu, compiled only in a CUDA build). Python reaches them as
// torch.ops.shiftnas.<name>; their fake (meta) implementations are registered from Python, in
// the modules each schema names with m.set_python_module (shiftnas/ops/*_ext.py).
//
//   ext_layer_norm(Tensor x, Tensor weight, Tensor bias, int active, float eps)
//       -> (Tensor y, Tensor mean, Tensor rstd)
//     LayerNorm of each row of x [..., C] over its first `active` channels, with weight[:active]
//     and bias[:active] (both [Cmax], x's dtype). y is [..., active] in x's dtype (a fresh
//     contiguous tensor); mean and rstd are [N] (N = rows of x) float32, float64 for a float64 x.
//     Rows of x may be padded (stride(-2) >= C); other layouts are copied.
//     1 <= active <= min(C, Cmax). Autograd: mean and rstd are not differentiable.
//   ext_layer_norm_backward(Tensor grad_y, Tensor x, Tensor weight, Tensor mean, Tensor rstd,
//                           int active) -> (Tensor grad_x, Tensor grad_weight, Tensor grad_bias)
//     grad_x has x's shape (zero in channels >= active); grad_weight and grad_bias have weight's
//     shape [Cmax] (zero past active) and dtype.
//   ext_dwconv(Tensor x, Tensor weight, Tensor? bias, int stride, int padding) -> Tensor
//     F.conv2d(x, weight[:C], bias[:C], stride, padding, 1, C) for x [B, C, H, W], weight
//     [Cmax, 1, k, k] (read in place), bias [Cmax] or None; stride 1 or 2.
//   ext_dwconv_backward(Tensor grad_y, Tensor x, Tensor weight, int stride, int padding,
//                       int bias_size, bool[3] output_mask)
//       -> (Tensor grad_x, Tensor grad_weight, Tensor grad_bias)
//     output_mask says which gradients to compute; the others are undefined (None). grad_weight
//     has weight's full shape and grad_bias is [bias_size], both zero past C. Deterministic.
//   ext_mask_dot(Tensor y, Tensor dy, int dim) -> Tensor             (CPU only)
//     out[c] = sum of y * dy over every dim but `dim`: float32 [y.size(dim)], fp32 accumulation
//     and no y-sized temporary. y and dy float32 or bfloat16, one dtype and shape.
//
// The *_backward ops have no derivative of their own (double backward is an error).
//
// The functions below check their arguments (a RuntimeError whose message names the op, the
// argument and what was expected) and run the CPU (cuda = false) or CUDA kernel: the dispatcher
// kernels of ops.cpp and cuda/*.cu are these with `cuda` fixed.
#pragma once

#include <ATen/core/Tensor.h>

#include <array>
#include <cstdint>
#include <optional>
#include <tuple>

namespace shiftnas {

std::tuple<at::Tensor, at::Tensor, at::Tensor> layer_norm_op(const at::Tensor& x,
                                                             const at::Tensor& weight,
                                                             const at::Tensor& bias,
                                                             int64_t active, double eps, bool cuda);

std::tuple<at::Tensor, at::Tensor, at::Tensor> layer_norm_backward_op(
    const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& weight,
    const at::Tensor& mean, const at::Tensor& rstd, int64_t active, bool cuda);

at::Tensor dwconv_op(const at::Tensor& x, const at::Tensor& weight,
                     const std::optional<at::Tensor>& bias, int64_t stride, int64_t padding,
                     bool cuda);

std::tuple<at::Tensor, at::Tensor, at::Tensor> dwconv_backward_op(
    const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& weight, int64_t stride,
    int64_t padding, int64_t bias_size, std::array<bool, 3> output_mask, bool cuda);

at::Tensor mask_dot_op(const at::Tensor& y, const at::Tensor& dy, int64_t dim);

}  // namespace shiftnas
