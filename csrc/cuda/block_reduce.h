// Warp and block sums shared by the CUDA kernels in this folder (internal;
// include only from .cu files).
#pragma once

namespace shiftnas {

constexpr int kWarp = 32;

template <typename acc_t>
__device__ __forceinline__ acc_t warp_sum(acc_t v) {
#pragma unroll
  for (int off = kWarp / 2; off > 0; off /= 2) v += __shfl_down_sync(0xffffffffu, v, off);
  return v;
}

// Sum of `v` over the block, returned to every thread. `smem` needs one slot
// per warp; the leading __syncthreads makes back-to-back calls safe (smem may
// still be read by the previous call).
template <typename acc_t>
__device__ __forceinline__ acc_t block_sum(acc_t v, acc_t* smem) {
  const int lane = threadIdx.x % kWarp;
  const int warp = threadIdx.x / kWarp;
  const int nwarps = (blockDim.x + kWarp - 1) / kWarp;
  v = warp_sum(v);
  __syncthreads();
  if (lane == 0) smem[warp] = v;
  __syncthreads();
  acc_t total = 0;
  for (int i = 0; i < nwarps; ++i) total += smem[i];
  return total;
}

}  // namespace shiftnas
