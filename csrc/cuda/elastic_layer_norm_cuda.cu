// CUDA implementation of elastic LayerNorm (see ../elastic_layer_norm.h for
// the contract; ../ops.cpp has already validated shapes/dtypes/devices).
//
// Kept deliberately simple:
//  * forward and grad_x: one thread block per row (grid-stride over rows),
//    fp32 (fp64 for double) accumulation, exact two-pass mean/variance. The
//    second pass re-reads the row, which is still in L1/L2.
//  * grad_weight/grad_bias: column sums over rows. A first kernel tiles
//    32 columns x a chunk of rows per block and writes one partial per chunk;
//    a second kernel adds the partials in a fixed order. No atomics, so the
//    result is deterministic.
//  * Only c10/cuda headers are used for streams/guards (not
//    ATen/cuda/CUDAContext.h), so building needs just nvcc + cudart headers,
//    not the cuBLAS/cuSPARSE/cuSOLVER development headers.
#include <ATen/AccumulateType.h>
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <climits>

#include <torch/library.h>

#include "../acc_type.h"
#include "../elastic_layer_norm.h"
#include "../ops.h"
#include "block_reduce.h"

namespace shiftnas {
namespace {

constexpr int kMaxThreads = 512;

template <typename T, typename acc_t>
__global__ void forward_kernel(const T* __restrict__ x, int64_t x_stride,
                               const T* __restrict__ w, const T* __restrict__ b,
                               T* __restrict__ y, acc_t* __restrict__ mean,
                               acc_t* __restrict__ rstd, int64_t N, int D, acc_t eps) {
  __shared__ acc_t smem[kMaxThreads / kWarp];
  const acc_t inv_d = acc_t(1) / static_cast<acc_t>(D);
  for (int64_t r = blockIdx.x; r < N; r += gridDim.x) {
    const T* xr = x + r * x_stride;
    acc_t s = 0;
    for (int c = threadIdx.x; c < D; c += blockDim.x) s += static_cast<acc_t>(xr[c]);
    const acc_t mu = block_sum(s, smem) * inv_d;
    acc_t q = 0;
    for (int c = threadIdx.x; c < D; c += blockDim.x) {
      const acc_t d = static_cast<acc_t>(xr[c]) - mu;
      q += d * d;
    }
    const acc_t var = block_sum(q, smem) * inv_d;
    const acc_t rs = acc_t(1) / sqrt(var + eps);
    if (threadIdx.x == 0) {
      mean[r] = mu;
      rstd[r] = rs;
    }
    T* yr = y + r * D;
    for (int c = threadIdx.x; c < D; c += blockDim.x) {
      const acc_t xv = static_cast<acc_t>(xr[c]);
      yr[c] = static_cast<T>((xv - mu) * rs * static_cast<acc_t>(w[c]) +
                             static_cast<acc_t>(b[c]));
    }
  }
}

// grad_x = rstd * (g - mean(g) - xhat * mean(g * xhat)), g = grad_y * w.
template <typename T, typename acc_t>
__global__ void backward_dx_kernel(const T* __restrict__ gy, int64_t gy_stride,
                                   const T* __restrict__ x, int64_t x_stride,
                                   const T* __restrict__ w, const acc_t* __restrict__ mean,
                                   const acc_t* __restrict__ rstd, T* __restrict__ dx,
                                   int64_t N, int D, int C) {
  __shared__ acc_t smem[kMaxThreads / kWarp];
  const acc_t inv_d = acc_t(1) / static_cast<acc_t>(D);
  for (int64_t r = blockIdx.x; r < N; r += gridDim.x) {
    const T* xr = x + r * x_stride;
    const T* gr = gy + r * gy_stride;
    const acc_t mu = mean[r];
    const acc_t rs = rstd[r];
    acc_t sg = 0, sgx = 0;
    for (int c = threadIdx.x; c < D; c += blockDim.x) {
      const acc_t g = static_cast<acc_t>(gr[c]) * static_cast<acc_t>(w[c]);
      sg += g;
      sgx += g * (static_cast<acc_t>(xr[c]) - mu);
    }
    sg = block_sum(sg, smem);
    sgx = block_sum(sgx, smem);
    const acc_t c1 = -rs * rs * rs * sgx * inv_d;
    const acc_t c3 = -rs * sg * inv_d;
    T* dxr = dx + r * C;
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
      acc_t v = 0;
      if (c < D) {
        const acc_t g = static_cast<acc_t>(gr[c]) * static_cast<acc_t>(w[c]);
        v = rs * g + c1 * (static_cast<acc_t>(xr[c]) - mu) + c3;
      }
      dxr[c] = static_cast<T>(v);
    }
  }
}

constexpr int kColTile = 32;  // columns per block (one per lane: coalesced rows)
constexpr int kRowLanes = 8;  // threads per column, striding over rows

// partial[chunk][0][c] = sum over the chunk's rows of grad_y * xhat,
// partial[chunk][1][c] = sum of grad_y.
template <typename T, typename acc_t>
__global__ void backward_dwdb_partial_kernel(const T* __restrict__ gy, int64_t gy_stride,
                                             const T* __restrict__ x, int64_t x_stride,
                                             const acc_t* __restrict__ mean,
                                             const acc_t* __restrict__ rstd,
                                             acc_t* __restrict__ partial, int64_t N, int D,
                                             int64_t rows_per_chunk) {
  __shared__ acc_t sw[kRowLanes][kColTile];
  __shared__ acc_t sb[kRowLanes][kColTile];
  const int c = blockIdx.x * kColTile + threadIdx.x;
  const int64_t r_begin = blockIdx.y * rows_per_chunk;
  const int64_t r_end = min(N, r_begin + rows_per_chunk);
  acc_t aw = 0, ab = 0;
  if (c < D) {
    for (int64_t r = r_begin + threadIdx.y; r < r_end; r += kRowLanes) {
      const acc_t g = static_cast<acc_t>(gy[r * gy_stride + c]);
      const acc_t xhat = (static_cast<acc_t>(x[r * x_stride + c]) - mean[r]) * rstd[r];
      aw += g * xhat;
      ab += g;
    }
  }
  sw[threadIdx.y][threadIdx.x] = aw;
  sb[threadIdx.y][threadIdx.x] = ab;
  __syncthreads();
  if (threadIdx.y == 0 && c < D) {
    for (int i = 1; i < kRowLanes; ++i) {
      aw += sw[i][threadIdx.x];
      ab += sb[i][threadIdx.x];
    }
    acc_t* p = partial + static_cast<int64_t>(blockIdx.y) * 2 * D;
    p[c] = aw;
    p[D + c] = ab;
  }
}

template <typename T, typename acc_t>
__global__ void backward_dwdb_final_kernel(const acc_t* __restrict__ partial, int chunks,
                                           int D, T* __restrict__ dw, T* __restrict__ db) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= D) return;
  acc_t aw = 0, ab = 0;
  for (int k = 0; k < chunks; ++k) {
    aw += partial[static_cast<int64_t>(k) * 2 * D + c];
    ab += partial[static_cast<int64_t>(k) * 2 * D + D + c];
  }
  dw[c] = static_cast<T>(aw);
  db[c] = static_cast<T>(ab);
}

int threads_for(int64_t cols) {
  const int64_t t = ((cols + kWarp - 1) / kWarp) * kWarp;
  return static_cast<int>(std::clamp<int64_t>(t, kWarp, kMaxThreads));
}

unsigned grid_for(int64_t rows) {
  return static_cast<unsigned>(std::clamp<int64_t>(rows, 1, INT_MAX));
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> elastic_layer_norm_forward_cuda(
    const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, int64_t active,
    double eps) {
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t N = x.size(0);
  const int64_t D = active;
  TORCH_CHECK(D <= INT_MAX, "elastic_layer_norm_forward_cuda: active is too large (", D, ")");
  const auto acc = acc_dtype(x.scalar_type());
  at::Tensor y = at::empty({N, D}, x.options());
  at::Tensor mean = at::empty({N}, x.options().dtype(acc));
  at::Tensor rstd = at::empty({N}, x.options().dtype(acc));
  if (N == 0) return {y, mean, rstd};
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();

  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kBFloat16, at::kHalf, x.scalar_type(), "elastic_layer_norm_forward_cuda", [&] {
        using acc_t = at::acc_type<scalar_t, /*is_cuda=*/true>;
        forward_kernel<scalar_t, acc_t><<<grid_for(N), threads_for(D), 0, stream>>>(
            x.const_data_ptr<scalar_t>(), row_stride(x), weight.const_data_ptr<scalar_t>(),
            bias.const_data_ptr<scalar_t>(), y.mutable_data_ptr<scalar_t>(),
            mean.mutable_data_ptr<acc_t>(), rstd.mutable_data_ptr<acc_t>(), N,
            static_cast<int>(D), static_cast<acc_t>(eps));
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
  return {y, mean, rstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> elastic_layer_norm_backward_cuda(
    const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& weight,
    const at::Tensor& mean_in, const at::Tensor& rstd_in, int64_t active) {
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t N = x.size(0);
  const int64_t C = x.size(1);
  const int64_t D = active;
  TORCH_CHECK(C <= INT_MAX, "elastic_layer_norm_backward_cuda: x has too many columns (", C,
              ")");
  const auto acc = acc_dtype(x.scalar_type());
  const at::Tensor mean = mean_in.to(acc).contiguous();
  const at::Tensor rstd = rstd_in.to(acc).contiguous();
  at::Tensor grad_x = at::empty({N, C}, x.options());
  // Zero-initialised so the tail past `active` needs no extra kernel.
  at::Tensor grad_w = at::zeros({weight.size(0)}, weight.options());
  at::Tensor grad_b = at::zeros({weight.size(0)}, weight.options());
  if (N == 0) return {grad_x, grad_w, grad_b};
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();

  // ~64 rows per chunk, capped so the partial buffer stays small.
  const int64_t chunks = std::clamp<int64_t>((N + 63) / 64, 1, 1024);
  const int64_t rows_per_chunk = (N + chunks - 1) / chunks;
  at::Tensor partial = at::empty({chunks, 2, D}, x.options().dtype(acc));

  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kBFloat16, at::kHalf, x.scalar_type(), "elastic_layer_norm_backward_cuda", [&] {
        using acc_t = at::acc_type<scalar_t, /*is_cuda=*/true>;
        const scalar_t* gp = grad_y.const_data_ptr<scalar_t>();
        const scalar_t* xp = x.const_data_ptr<scalar_t>();
        const acc_t* mp = mean.const_data_ptr<acc_t>();
        const acc_t* rp = rstd.const_data_ptr<acc_t>();
        const int64_t gs = row_stride(grad_y);
        const int64_t xs = row_stride(x);

        backward_dx_kernel<scalar_t, acc_t><<<grid_for(N), threads_for(C), 0, stream>>>(
            gp, gs, xp, xs, weight.const_data_ptr<scalar_t>(), mp, rp,
            grad_x.mutable_data_ptr<scalar_t>(), N, static_cast<int>(D), static_cast<int>(C));
        C10_CUDA_KERNEL_LAUNCH_CHECK();

        const dim3 pgrid(static_cast<unsigned>((D + kColTile - 1) / kColTile),
                         static_cast<unsigned>(chunks));
        const dim3 pblock(kColTile, kRowLanes);
        backward_dwdb_partial_kernel<scalar_t, acc_t><<<pgrid, pblock, 0, stream>>>(
            gp, gs, xp, xs, mp, rp, partial.mutable_data_ptr<acc_t>(), N, static_cast<int>(D),
            rows_per_chunk);
        C10_CUDA_KERNEL_LAUNCH_CHECK();

        const int fthreads = 256;
        const unsigned fblocks = static_cast<unsigned>((D + fthreads - 1) / fthreads);
        backward_dwdb_final_kernel<scalar_t, acc_t><<<fblocks, fthreads, 0, stream>>>(
            partial.const_data_ptr<acc_t>(), static_cast<int>(chunks), static_cast<int>(D),
            grad_w.mutable_data_ptr<scalar_t>(), grad_b.mutable_data_ptr<scalar_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
  return {grad_x, grad_w, grad_b};
}

}  // namespace shiftnas

// The CUDA kernels of shiftnas::ext_layer_norm and ext_layer_norm_backward (../ops.h; the ops
// are defined, and their arguments checked, in ../ops.cpp).
TORCH_LIBRARY_IMPL(shiftnas, CUDA, m) {
  m.impl("ext_layer_norm", [](const at::Tensor& x, const at::Tensor& weight,
                              const at::Tensor& bias, int64_t active, double eps) {
    return shiftnas::layer_norm_op(x, weight, bias, active, eps, true);
  });
  m.impl("ext_layer_norm_backward",
         [](const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& weight,
            const at::Tensor& mean, const at::Tensor& rstd, int64_t active) {
           return shiftnas::layer_norm_backward_op(grad_y, x, weight, mean, rstd, active, true);
         });
}
