// CUDA implementation of the elastic depthwise conv (see ../elastic_dwconv.h
// for the contract; ../ops.cpp has already validated shapes/dtypes/devices).
//
// Kept deliberately simple (direct convolution, no shared-memory tiling):
//  * forward: one thread per output element, grid-stride; the kernel size is
//    a template parameter for 3/5/7 so the tap loops unroll (0 = runtime).
//    weight[:C] and bias[:C] are read in place from the [Cmax, ...] buffers.
//  * grad_x: one thread per input element gathers the taps that reach it
//    (the adjoint of the forward gather), so there are no atomics.
//  * grad_weight/grad_bias: per-channel sums over B*Ho*Wo. A first kernel
//    gives each (chunk of positions, channel) block k*k+1 accumulators per
//    thread, reduces them over the block and writes one partial per chunk; a
//    second kernel adds the partials in a fixed order into the zero-filled
//    full-size [Cmax] buffers. No atomics: deterministic.
//  * Only c10/cuda headers are used for streams/guards (not
//    ATen/cuda/CUDAContext.h), so building needs just nvcc + cudart headers.
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
#include "../elastic_dwconv.h"
#include "../ops.h"
#include "block_reduce.h"

namespace shiftnas {
namespace {

constexpr int kThreads = 256;

struct Dims {
  int C, H, W, Ho, Wo, K, S, P;
};

template <typename T, typename acc_t, int KC>
__global__ void forward_kernel(const T* __restrict__ x, const T* __restrict__ w,
                               const T* __restrict__ bias, T* __restrict__ y, int64_t total,
                               Dims d) {
  const int K = KC > 0 ? KC : d.K;
  const int64_t plane_out = static_cast<int64_t>(d.Ho) * d.Wo;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int ow = static_cast<int>(idx % d.Wo);
    const int oh = static_cast<int>((idx / d.Wo) % d.Ho);
    const int64_t plane = idx / plane_out;
    const int c = static_cast<int>(plane % d.C);
    const T* xp = x + plane * d.H * d.W;
    const T* wp = w + static_cast<int64_t>(c) * K * K;
    acc_t acc = bias != nullptr ? static_cast<acc_t>(bias[c]) : acc_t(0);
    const int ih0 = oh * d.S - d.P;
    const int iw0 = ow * d.S - d.P;
#pragma unroll
    for (int i = 0; i < K; ++i) {
      const int ih = ih0 + i;
      if (ih < 0 || ih >= d.H) continue;
#pragma unroll
      for (int j = 0; j < K; ++j) {
        const int iw = iw0 + j;
        if (iw < 0 || iw >= d.W) continue;
        acc += static_cast<acc_t>(wp[i * K + j]) * static_cast<acc_t>(xp[ih * d.W + iw]);
      }
    }
    y[idx] = static_cast<T>(acc);
  }
}

// grad_x[h][w] = sum over taps (i, j) with (h + P - i) and (w + P - j) on the
// stride grid of w[i][j] * grad_y[(h + P - i) / S][(w + P - j) / S].
template <typename T, typename acc_t, int KC>
__global__ void grad_x_kernel(const T* __restrict__ gy, const T* __restrict__ w,
                              T* __restrict__ gx, int64_t total, Dims d) {
  const int K = KC > 0 ? KC : d.K;
  const int64_t plane_in = static_cast<int64_t>(d.H) * d.W;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int iw = static_cast<int>(idx % d.W);
    const int ih = static_cast<int>((idx / d.W) % d.H);
    const int64_t plane = idx / plane_in;
    const int c = static_cast<int>(plane % d.C);
    const T* gp = gy + plane * d.Ho * d.Wo;
    const T* wp = w + static_cast<int64_t>(c) * K * K;
    acc_t acc = 0;
#pragma unroll
    for (int i = 0; i < K; ++i) {
      const int th = ih + d.P - i;
      if (th < 0 || th % d.S != 0) continue;
      const int oh = th / d.S;
      if (oh >= d.Ho) continue;
#pragma unroll
      for (int j = 0; j < K; ++j) {
        const int tw = iw + d.P - j;
        if (tw < 0 || tw % d.S != 0) continue;
        const int ow = tw / d.S;
        if (ow >= d.Wo) continue;
        acc += static_cast<acc_t>(wp[i * K + j]) * static_cast<acc_t>(gp[oh * d.Wo + ow]);
      }
    }
    gx[idx] = static_cast<T>(acc);
  }
}

// Block (chunk, c) sums grad_y * x over the chunk's flat positions
// n in [n0, n1) of the B*Ho*Wo outputs of channel c:
//   partial[chunk][c][t] for the k*k taps t, partial[chunk][c][k*k] = sum grad_y.
template <typename T, typename acc_t, int KC>
__global__ void grad_wb_partial_kernel(const T* __restrict__ gy, const T* __restrict__ x,
                                       acc_t* __restrict__ partial, int64_t positions,
                                       int64_t per_chunk, Dims d) {
  __shared__ acc_t smem[kThreads / kWarp];
  const int K = KC > 0 ? KC : d.K;
  const int taps = K * K;
  const int c = blockIdx.x;
  const int64_t n0 = static_cast<int64_t>(blockIdx.y) * per_chunk;
  const int64_t n1 = min(positions, n0 + per_chunk);
  const int64_t plane_out = static_cast<int64_t>(d.Ho) * d.Wo;
  acc_t* out = partial + (static_cast<int64_t>(blockIdx.y) * d.C + c) * (taps + 1);

  if constexpr (KC > 0) {
    // All taps in registers: one pass over the positions.
    acc_t acc[KC * KC + 1];
#pragma unroll
    for (int t = 0; t <= KC * KC; ++t) acc[t] = 0;
    for (int64_t n = n0 + threadIdx.x; n < n1; n += blockDim.x) {
      const int64_t b = n / plane_out;
      const int o = static_cast<int>(n % plane_out);
      const int oh = o / d.Wo, ow = o % d.Wo;
      const int64_t plane = b * d.C + c;
      const acc_t g = static_cast<acc_t>(gy[plane * plane_out + o]);
      const T* xp = x + plane * d.H * d.W;
      acc[KC * KC] += g;
#pragma unroll
      for (int i = 0; i < KC; ++i) {
        const int ih = oh * d.S - d.P + i;
        const bool row_ok = ih >= 0 && ih < d.H;
#pragma unroll
        for (int j = 0; j < KC; ++j) {
          const int iw = ow * d.S - d.P + j;
          if (row_ok && iw >= 0 && iw < d.W) {
            acc[i * KC + j] += g * static_cast<acc_t>(xp[ih * d.W + iw]);
          }
        }
      }
    }
#pragma unroll
    for (int t = 0; t <= KC * KC; ++t) {
      const acc_t s = block_sum(acc[t], smem);
      if (threadIdx.x == 0) out[t] = s;
    }
  } else {
    // Any kernel size: one pass per tap (the positions are re-read from L2).
    // One position's contribution to tap (i, j); zero outside x.
    const auto x_at = [&](int64_t n, int i, int j, acc_t* g_out) -> acc_t {
      const int64_t b = n / plane_out;
      const int o = static_cast<int>(n % plane_out);
      const int oh = o / d.Wo, ow = o % d.Wo;
      const int64_t plane = b * d.C + c;
      *g_out = static_cast<acc_t>(gy[plane * plane_out + o]);
      const int ih = oh * d.S - d.P + i, iw = ow * d.S - d.P + j;
      if (ih < 0 || ih >= d.H || iw < 0 || iw >= d.W) return acc_t(0);
      return static_cast<acc_t>(x[plane * d.H * d.W + static_cast<int64_t>(ih) * d.W + iw]);
    };

    acc_t sg = 0;
    for (int t = 0; t < taps; ++t) {
      acc_t a = 0;
      for (int64_t n = n0 + threadIdx.x; n < n1; n += blockDim.x) {
        acc_t g;
        const acc_t xv = x_at(n, t / K, t % K, &g);
        a += g * xv;
        if (t == 0) sg += g;
      }
      const acc_t s = block_sum(a, smem);
      if (threadIdx.x == 0) out[t] = s;
    }
    const acc_t s = block_sum(sg, smem);
    if (threadIdx.x == 0) out[taps] = s;
  }
}

template <typename T, typename acc_t>
__global__ void grad_wb_final_kernel(const acc_t* __restrict__ partial, int chunks, int C,
                                     int taps, T* __restrict__ gw, T* __restrict__ gb) {
  const int idx = blockIdx.x * blockDim.x + threadIdx.x;  // over C * (taps + 1)
  if (idx >= C * (taps + 1)) return;
  acc_t s = 0;
  for (int k = 0; k < chunks; ++k) s += partial[static_cast<int64_t>(k) * C * (taps + 1) + idx];
  const int c = idx / (taps + 1), t = idx % (taps + 1);
  if (t < taps) {
    if (gw != nullptr) gw[static_cast<int64_t>(c) * taps + t] = static_cast<T>(s);
  } else if (gb != nullptr) {
    gb[c] = static_cast<T>(s);
  }
}

unsigned grid_for(int64_t n, int threads) {
  return static_cast<unsigned>(std::clamp<int64_t>((n + threads - 1) / threads, 1, 65535 * 16));
}

Dims make_dims(const at::Tensor& x, const at::Tensor& weight, int64_t stride, int64_t padding,
               const char* fn) {
  const int64_t H = x.size(2), W = x.size(3), K = weight.size(2);
  TORCH_CHECK(x.size(1) <= INT_MAX && H * W <= INT_MAX && K * K <= INT_MAX, fn,
              ": x or weight is too large for the CUDA kernels (sizes ", x.sizes(), ", ",
              weight.sizes(), ")");
  Dims d{};
  d.C = static_cast<int>(x.size(1));
  d.H = static_cast<int>(H);
  d.W = static_cast<int>(W);
  d.K = static_cast<int>(K);
  d.S = static_cast<int>(stride);
  d.P = static_cast<int>(padding);
  d.Ho = static_cast<int>((H + 2 * padding - K) / stride + 1);
  d.Wo = static_cast<int>((W + 2 * padding - K) / stride + 1);
  return d;
}

// Launches KERNEL<scalar_t, acc_t, KC> with KC = 3, 5, 7 or 0 (runtime k).
#define SHIFTNAS_LAUNCH_K(KVAL, KERNEL, GRID, BLOCK, STREAM, ...)                       \
  do {                                                                                  \
    switch (KVAL) {                                                                     \
      case 3: KERNEL<scalar_t, acc_t, 3><<<GRID, BLOCK, 0, STREAM>>>(__VA_ARGS__); break; \
      case 5: KERNEL<scalar_t, acc_t, 5><<<GRID, BLOCK, 0, STREAM>>>(__VA_ARGS__); break; \
      case 7: KERNEL<scalar_t, acc_t, 7><<<GRID, BLOCK, 0, STREAM>>>(__VA_ARGS__); break; \
      default: KERNEL<scalar_t, acc_t, 0><<<GRID, BLOCK, 0, STREAM>>>(__VA_ARGS__); break; \
    }                                                                                   \
    C10_CUDA_KERNEL_LAUNCH_CHECK();                                                     \
  } while (0)

}  // namespace

at::Tensor elastic_dwconv_forward_cuda(const at::Tensor& x, const at::Tensor& weight,
                                       const at::Tensor& bias, int64_t stride, int64_t padding) {
  const c10::cuda::CUDAGuard guard(x.device());
  const Dims d = make_dims(x, weight, stride, padding, "elastic_dwconv_forward_cuda");
  at::Tensor y = at::empty({x.size(0), x.size(1), d.Ho, d.Wo}, x.options());
  const int64_t total = y.numel();
  if (total == 0) return y;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kBFloat16, at::kHalf, x.scalar_type(), "elastic_dwconv_forward_cuda", [&] {
        using acc_t = at::acc_type<scalar_t, /*is_cuda=*/true>;
        const scalar_t* bp = bias.defined() ? bias.const_data_ptr<scalar_t>() : nullptr;
        SHIFTNAS_LAUNCH_K(d.K, forward_kernel, grid_for(total, kThreads), kThreads, stream,
                          x.const_data_ptr<scalar_t>(), weight.const_data_ptr<scalar_t>(), bp,
                          y.mutable_data_ptr<scalar_t>(), total, d);
      });
  return y;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> elastic_dwconv_backward_cuda(
    const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& weight, int64_t stride,
    int64_t padding, int64_t bias_size, std::array<bool, 3> output_mask) {
  const c10::cuda::CUDAGuard guard(x.device());
  const char* fn = "elastic_dwconv_backward_cuda";
  const Dims d = make_dims(x, weight, stride, padding, fn);
  const bool need_x = output_mask[0], need_w = output_mask[1], need_b = output_mask[2];
  const int64_t B = x.size(0), K = d.K, taps = K * K;
  at::Tensor grad_x = need_x ? at::empty(x.sizes(), x.options()) : at::Tensor();
  // Zero-filled full-size buffers: the tail past C needs no extra kernel.
  at::Tensor grad_w =
      need_w ? at::zeros({weight.size(0), 1, K, K}, weight.options()) : at::Tensor();
  at::Tensor grad_b = need_b ? at::zeros({bias_size}, weight.options()) : at::Tensor();
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int64_t positions = B * d.Ho * d.Wo;  // per channel

  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kBFloat16, at::kHalf, x.scalar_type(), "elastic_dwconv_backward_cuda", [&] {
        using acc_t = at::acc_type<scalar_t, /*is_cuda=*/true>;
        const scalar_t* gp = grad_y.const_data_ptr<scalar_t>();
        if (need_x && grad_x.numel() > 0) {
          const int64_t total = grad_x.numel();
          SHIFTNAS_LAUNCH_K(d.K, grad_x_kernel, grid_for(total, kThreads), kThreads, stream, gp,
                            weight.const_data_ptr<scalar_t>(),
                            grad_x.mutable_data_ptr<scalar_t>(), total, d);
        }
        if ((need_w || need_b) && positions > 0) {
          // Enough blocks to fill the GPU (~2 per SM on a large part), but
          // at least ~1K positions per block.
          const int64_t want = std::max<int64_t>(1, (264 + d.C - 1) / d.C);
          const int64_t chunks =
              std::clamp<int64_t>(std::min(want, (positions + 1023) / 1024), 1, 65535);
          const int64_t per_chunk = (positions + chunks - 1) / chunks;
          at::Tensor partial =
              at::empty({chunks, d.C, taps + 1}, x.options().dtype(acc_dtype(x.scalar_type())));
          const dim3 grid(static_cast<unsigned>(d.C), static_cast<unsigned>(chunks));
          SHIFTNAS_LAUNCH_K(d.K, grad_wb_partial_kernel, grid, kThreads, stream, gp,
                            x.const_data_ptr<scalar_t>(), partial.mutable_data_ptr<acc_t>(),
                            positions, per_chunk, d);
          const int64_t outs = static_cast<int64_t>(d.C) * (taps + 1);
          grad_wb_final_kernel<scalar_t, acc_t><<<grid_for(outs, kThreads), kThreads, 0, stream>>>(
              partial.const_data_ptr<acc_t>(), static_cast<int>(chunks), d.C,
              static_cast<int>(taps), need_w ? grad_w.mutable_data_ptr<scalar_t>() : nullptr,
              need_b ? grad_b.mutable_data_ptr<scalar_t>() : nullptr);
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        }
      });
  return {grad_x, grad_w, grad_b};
}

}  // namespace shiftnas

// The CUDA kernels of shiftnas::ext_dwconv and ext_dwconv_backward (../ops.h; the ops are
// defined, and their arguments checked, in ../ops.cpp).
TORCH_LIBRARY_IMPL(shiftnas, CUDA, m) {
  m.impl("ext_dwconv", [](const at::Tensor& x, const at::Tensor& weight,
                          const std::optional<at::Tensor>& bias, int64_t stride, int64_t padding) {
    return shiftnas::dwconv_op(x, weight, bias, stride, padding, true);
  });
  m.impl("ext_dwconv_backward",
         [](const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& weight,
            int64_t stride, int64_t padding, int64_t bias_size, std::array<bool, 3> output_mask) {
           return shiftnas::dwconv_backward_op(grad_y, x, weight, stride, padding, bias_size,
                                               output_mask, true);
         });
}
