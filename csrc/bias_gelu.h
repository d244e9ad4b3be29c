// Fused bias + GELU over an active column prefix: y = gelu(x + bias[:N]).
//
// The hidden layer of an elastic MLP is fc1 -> + bias -> GELU with an active
// width N <= Nmax. The reference, F.gelu(x + b[:N]), makes two passes over
// [M, N] (add, then GELU), saves the sum for backward, and its backward pays
// gelu_backward, a column sum for the bias and slice_backward's zero-filled
// [Nmax] buffer. Here forward is one pass, backward recomputes x + b in
// registers and writes grad_bias straight into a full-size buffer.
//
// GELU is the exact (erf) form, as F.gelu(approximate="none"):
//   gelu(z) = z/2 * (1 + erf(z/sqrt(2))),
//   gelu'(z) = (1 + erf(z/sqrt(2)))/2 + z * exp(-z^2/2) / sqrt(2*pi).
//
// The implementation functions below assume their inputs were validated by
// bindings.cpp (shapes, dtypes, devices). Layout preconditions:
//   x:       2-D [M, N], stride(1) == 1, stride(0) >= N (row padding allowed)
//   grad_y:  2-D [M, N], stride(1) == 1, stride(0) >= N
//   bias:    contiguous 1-D [Nmax], Nmax >= N, same dtype as x
#pragma once

#include <ATen/core/Tensor.h>

#include <tuple>

namespace shiftnas {

// Returns y [M, N] in x's dtype.
at::Tensor bias_gelu_forward_cpu(const at::Tensor& x, const at::Tensor& bias);

// Returns (grad_x [M, N], grad_bias [Nmax] zero past N).
std::tuple<at::Tensor, at::Tensor> bias_gelu_backward_cpu(const at::Tensor& grad_y,
                                                          const at::Tensor& x,
                                                          const at::Tensor& bias);

}  // namespace shiftnas
