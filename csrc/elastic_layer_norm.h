// Elastic LayerNorm: LayerNorm over the first `active` channels of each row.
//
// A weight-sharing supernet stores one [Cmax] weight/bias and one activation
// width C per layer, but a sampled sub-network only uses a channel prefix.
// The reference path (F.layer_norm(x[:, :active], ...)) pays for a strided
// copy of the slice in forward and a zero-filled scatter in backward; these
// kernels read the prefix in place and write the zero tail directly.
//
// The implementation functions below assume their inputs were validated by
// ops.cpp (shapes, dtypes, devices). Layout preconditions:
//   x:       2-D [N, C], stride(1) == 1, stride(0) >= C (row padding allowed)
//   grad_y:  2-D [N, active], stride(1) == 1, stride(0) >= active
//   weight, bias: contiguous 1-D [Cmax], same dtype as x
//   mean, rstd:   contiguous 1-D [N], "accumulation dtype" (float64 for
//                 float64 inputs, float32 otherwise)
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <tuple>

namespace shiftnas {

// Returns (y [N, active] in x's dtype, mean [N], rstd [N]).
std::tuple<at::Tensor, at::Tensor, at::Tensor> elastic_layer_norm_forward_cpu(
    const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
    int64_t active, double eps);

// Returns (grad_x [N, C] zero past `active`, grad_weight [Cmax] and
// grad_bias [Cmax], both zero past `active`).
std::tuple<at::Tensor, at::Tensor, at::Tensor> elastic_layer_norm_backward_cpu(
    const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& weight,
    const at::Tensor& mean, const at::Tensor& rstd, int64_t active);

#ifdef WITH_CUDA
std::tuple<at::Tensor, at::Tensor, at::Tensor> elastic_layer_norm_forward_cuda(
    const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
    int64_t active, double eps);

std::tuple<at::Tensor, at::Tensor, at::Tensor> elastic_layer_norm_backward_cuda(
    const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& weight,
    const at::Tensor& mean, const at::Tensor& rstd, int64_t active);
#endif

}  // namespace shiftnas
