// Mask dot: the gradient a prefix-path mask tap hands its mask (shiftnas/ops/ref.py
// `mask_dot`): out[c] = sum over every index but `dim` of y * dy, with y and dy
// viewed as [outer, C, inner] (C = y.size(dim)), accumulated in fp32 and
// without the [y]-sized y * dy temporary the reference's mul + sum makes.
//
// Preconditions (checked in ops.cpp): y and dy contiguous, same shape,
// both float32 or both bfloat16, CPU. Returns a float32 [C] tensor.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace shiftnas {

at::Tensor mask_dot_cpu(const at::Tensor& y, const at::Tensor& dy, int64_t dim);

}  // namespace shiftnas
