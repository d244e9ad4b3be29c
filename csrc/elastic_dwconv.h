// Elastic depthwise conv 2-D: a depthwise convolution over the first C
// channels of a [Cmax, 1, k, k] weight.
//
// An elastic CNN supernet stores one max-size depthwise weight per layer and
// runs a channel prefix C <= Cmax (and a kernel k <= K_max, which the module
// crops/transforms in Python before calling us). The reference path,
// F.conv2d(x, weight[:C], bias[:C], stride, padding, 1, C), is fast in
// forward, but its backward pays for slice_backward: a zero-filled [Cmax,...]
// buffer plus a copy of the [C,...] gradient (~6% of a CNN supernet step).
// These kernels read weight[:C] in place and write grad_weight / grad_bias
// straight into full-size buffers, zero past C.
//
// Semantics: y = F.conv2d(x, weight[:C], bias[:C] or None, stride, padding,
// dilation 1, groups C), i.e. for every (b, c):
//   y[b,c,oh,ow] = bias[c] + sum_{i,j < k} weight[c,0,i,j] *
//                  x[b,c, oh*stride - padding + i, ow*stride - padding + j]
// with zeros outside x.
//
// The implementation functions below assume their inputs were validated by
// ops.cpp (shapes, dtypes, devices). Layout preconditions:
//   x:       4-D [B, C, H, W], contiguous (NCHW)
//   grad_y:  4-D [B, C, Ho, Wo], contiguous, Ho/Wo as F.conv2d computes them
//   weight:  4-D [Cmax, 1, k, k], contiguous, Cmax >= C, same dtype as x
//   bias:    undefined, or contiguous 1-D [>= C], same dtype as x
//   stride in {1, 2}; padding >= 0; H + 2*padding >= k and W + 2*padding >= k
#pragma once

#include <ATen/core/Tensor.h>

#include <array>
#include <cstdint>
#include <tuple>

namespace shiftnas {

// Returns y [B, C, Ho, Wo] in x's dtype.
at::Tensor elastic_dwconv_forward_cpu(const at::Tensor& x, const at::Tensor& weight,
                                      const at::Tensor& bias, int64_t stride, int64_t padding);

// Returns (grad_x [B, C, H, W], grad_weight [Cmax, 1, k, k] zero past C,
// grad_bias [bias_size] zero past C). output_mask says which of the three to
// compute; the others come back undefined (None in Python). bias_size >= C is
// only read when output_mask[2] is set.
std::tuple<at::Tensor, at::Tensor, at::Tensor> elastic_dwconv_backward_cpu(
    const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& weight, int64_t stride,
    int64_t padding, int64_t bias_size, std::array<bool, 3> output_mask);

#ifdef WITH_CUDA
at::Tensor elastic_dwconv_forward_cuda(const at::Tensor& x, const at::Tensor& weight,
                                       const at::Tensor& bias, int64_t stride, int64_t padding);

std::tuple<at::Tensor, at::Tensor, at::Tensor> elastic_dwconv_backward_cuda(
    const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& weight, int64_t stride,
    int64_t padding, int64_t bias_size, std::array<bool, 3> output_mask);
#endif

}  // namespace shiftnas
