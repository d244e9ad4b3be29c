// CPU implementation of elastic LayerNorm (see elastic_layer_norm.h).
//
// Design notes (the "why"):
//  * Rows are independent, so forward and grad_x parallelise over rows with
//    at::parallel_for. Rows of a ViT-sized layer (<= a few thousand
//    channels) fit in L1, so the exact two-pass mean/variance costs one extra
//    L1 read per element and avoids Welford's per-element division.
//  * Reductions use explicit SIMD values (GCC/Clang vector extensions, 64
//    bytes = one AVX-512 / two AVX2 / four SSE registers). Auto-vectorising a
//    floating-point reduction needs -ffast-math (reassociation), and GCC's SLP
//    turned our lane-array attempts into serial scalar code in the row tails
//    and the final fold, which dominated the cost for 192..256-wide rows.
//    Element-wise loops stay plain loops over __restrict__ pointers.
//  * The row kernels are compiled several times (x86-64-v4 / v3 / baseline)
//    with GCC function multi-versioning and picked at load time, so one
//    portable wheel still runs AVX-512/AVX2 code where available. Only the
//    leaf kernels are cloned; ATen code is never compiled with extra ISA
//    flags, so nothing with wider instructions can leak into shared inline
//    functions.
//  * grad_weight/grad_bias are column sums over rows. Each row block owns a
//    private partial buffer; the blocks are fixed up front (not per thread
//    id), which makes the result deterministic for a given thread count.
//  * bfloat16/float16 rows are widened into a per-chunk fp32 scratch row once,
//    then share the fp32 code path; float64 accumulates in double.
#include "elastic_layer_norm.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

#include "acc_type.h"
#include "cpu_simd.h"

namespace shiftnas {
namespace {

using namespace simd;  // NOLINT(build/namespaces): cpu_simd.h's small toolkit
template <typename acc_t>
constexpr int64_t kW = simd::kLanes<acc_t>;  // lanes

// Row sum of x (kSqDev = false) or of (x - mu)^2 (kSqDev = true). Four
// independent vector accumulators keep the add chains short (a 240-wide fp32
// row is 15 vectors: chains of <= 5 adds instead of 15), then < kW scalar
// steps for the ragged end.
template <bool kSqDev, typename acc_t>
SHIFTNAS_INLINE acc_t row_reduce(const acc_t* SHIFTNAS_RESTRICT x, int64_t n, acc_t mu) {
  constexpr int64_t W = kW<acc_t>;
  const auto term = [mu](auto v) {
    if constexpr (kSqDev) {
      return (v - mu) * (v - mu);
    } else {
      return v;
    }
  };
  simd_t<acc_t> a0 = {}, a1 = {}, a2 = {}, a3 = {};
  int64_t i = 0;
  for (; i + 4 * W <= n; i += 4 * W) {
    a0 += term(vload(x + i));
    a1 += term(vload(x + i + W));
    a2 += term(vload(x + i + 2 * W));
    a3 += term(vload(x + i + 3 * W));
  }
  if (i + 2 * W <= n) {
    a0 += term(vload(x + i));
    a1 += term(vload(x + i + W));
    i += 2 * W;
  }
  if (i + W <= n) {
    a2 += term(vload(x + i));
    i += W;
  }
  acc_t t = 0;
  for (; i < n; ++i) t += term(x[i]);
  return hsum<acc_t>((a0 + a1) + (a2 + a3)) + t;
}

// Rows already in the accumulation type are used in place; narrower rows are
// widened once into `scratch` so the three passes below read fp32.
template <typename T, typename acc_t>
SHIFTNAS_INLINE const acc_t* widen_row(const T* SHIFTNAS_RESTRICT src,
                                       acc_t* SHIFTNAS_RESTRICT scratch, int64_t n) {
  if constexpr (std::is_same_v<T, acc_t>) {
    return src;
  } else {
    for (int64_t i = 0; i < n; ++i) scratch[i] = static_cast<acc_t>(src[i]);
    return scratch;
  }
}

template <typename T, typename acc_t = at::opmath_type<T>>
SHIFTNAS_INLINE void forward_rows_impl(
    const T* SHIFTNAS_RESTRICT x, int64_t x_stride, const acc_t* SHIFTNAS_RESTRICT w,
    const acc_t* SHIFTNAS_RESTRICT b, T* SHIFTNAS_RESTRICT y, acc_t* SHIFTNAS_RESTRICT mean,
    acc_t* SHIFTNAS_RESTRICT rstd, int64_t r0, int64_t r1, int64_t D, acc_t eps,
    acc_t* SHIFTNAS_RESTRICT scratch) {
  const acc_t inv_d = acc_t(1) / static_cast<acc_t>(D);
  for (int64_t r = r0; r < r1; ++r) {
    const acc_t* xr = widen_row<T, acc_t>(x + r * x_stride, scratch, D);
    const acc_t mu = row_reduce<false>(xr, D, acc_t(0)) * inv_d;
    const acc_t var = row_reduce<true>(xr, D, mu) * inv_d;
    const acc_t rs = acc_t(1) / std::sqrt(var + eps);
    mean[r] = mu;
    rstd[r] = rs;
    T* SHIFTNAS_RESTRICT yr = y + r * D;
    for (int64_t c = 0; c < D; ++c) {
      yr[c] = static_cast<T>((xr[c] - mu) * rs * w[c] + b[c]);
    }
  }
}

// grad_x = rstd * (g - mean(g) - xhat * mean(g * xhat)),  g = grad_y * w,
// written as rs*g + c1*(x - mu) + c3 so each element costs a few FMAs.
// dw/db receive this block's partial column sums.
template <typename T, typename acc_t = at::opmath_type<T>>
SHIFTNAS_INLINE void backward_rows_impl(
    const T* SHIFTNAS_RESTRICT x, int64_t x_stride, const T* SHIFTNAS_RESTRICT gy,
    int64_t gy_stride, const acc_t* SHIFTNAS_RESTRICT w, const acc_t* SHIFTNAS_RESTRICT mean,
    const acc_t* SHIFTNAS_RESTRICT rstd, T* SHIFTNAS_RESTRICT dx, int64_t C,
    acc_t* SHIFTNAS_RESTRICT dw, acc_t* SHIFTNAS_RESTRICT db, int64_t r0, int64_t r1,
    int64_t D, acc_t* SHIFTNAS_RESTRICT scratch) {
  const acc_t inv_d = acc_t(1) / static_cast<acc_t>(D);
  for (int64_t r = r0; r < r1; ++r) {
    const acc_t* xr = widen_row<T, acc_t>(x + r * x_stride, scratch, D);
    const acc_t* gr = widen_row<T, acc_t>(gy + r * gy_stride, scratch + D, D);
    const acc_t mu = mean[r];
    const acc_t rs = rstd[r];

    // Pass 1: the two row sums for grad_x, plus this block's dw/db columns.
    // Two accumulator pairs (even/odd vectors) halve the add chains.
    constexpr int64_t W = kW<acc_t>;
    simd_t<acc_t> vg[2] = {}, vgx[2] = {};
    const auto step = [&](int64_t c, int k) {
      const simd_t<acc_t> g = vload(gr + c);
      const simd_t<acc_t> xc = vload(xr + c) - mu;
      const simd_t<acc_t> gw = g * vload(w + c);
      vg[k] += gw;
      vgx[k] += gw * xc;
      vstore(dw + c, vload(dw + c) + g * (xc * rs));
      vstore(db + c, vload(db + c) + g);
    };
    int64_t c = 0;
    for (; c + 2 * W <= D; c += 2 * W) {
      step(c, 0);
      step(c + W, 1);
    }
    if (c + W <= D) {
      step(c, 0);
      c += W;
    }
    acc_t sum_g = 0, sum_gx = 0;
    for (; c < D; ++c) {
      const acc_t g = gr[c];
      const acc_t xc = xr[c] - mu;
      const acc_t gw = g * w[c];
      sum_g += gw;
      sum_gx += gw * xc;
      dw[c] += g * (xc * rs);
      db[c] += g;
    }
    sum_g += hsum<acc_t>(vg[0] + vg[1]);
    sum_gx += hsum<acc_t>(vgx[0] + vgx[1]);

    const acc_t c1 = -rs * rs * rs * sum_gx * inv_d;
    const acc_t c3 = -rs * sum_g * inv_d;
    T* SHIFTNAS_RESTRICT dxr = dx + r * C;
    for (int64_t c = 0; c < D; ++c) {
      dxr[c] = static_cast<T>(rs * gr[c] * w[c] + c1 * (xr[c] - mu) + c3);
    }
    for (int64_t c = D; c < C; ++c) dxr[c] = static_cast<T>(0);
  }
}

// Non-template, per-dtype entry points: the unit that gets multi-versioned.
#define SHIFTNAS_DEFINE_ROW_KERNELS(T)                                                     \
  SHIFTNAS_CLONES void forward_rows(const T* x, int64_t xs, const at::opmath_type<T>* w,   \
                                    const at::opmath_type<T>* b, T* y,                     \
                                    at::opmath_type<T>* mean, at::opmath_type<T>* rstd,    \
                                    int64_t r0, int64_t r1, int64_t D,                     \
                                    at::opmath_type<T> eps,                                \
                                    at::opmath_type<T>* scratch) {                         \
    forward_rows_impl<T>(x, xs, w, b, y, mean, rstd, r0, r1, D, eps, scratch);             \
  }                                                                                        \
  SHIFTNAS_CLONES void backward_rows(const T* x, int64_t xs, const T* gy, int64_t gs,      \
                                     const at::opmath_type<T>* w,                          \
                                     const at::opmath_type<T>* mean,                       \
                                     const at::opmath_type<T>* rstd, T* dx, int64_t C,     \
                                     at::opmath_type<T>* dw, at::opmath_type<T>* db,       \
                                     int64_t r0, int64_t r1, int64_t D,                    \
                                     at::opmath_type<T>* scratch) {                        \
    backward_rows_impl<T>(x, xs, gy, gs, w, mean, rstd, dx, C, dw, db, r0, r1, D,         \
                          scratch);                                                        \
  }

SHIFTNAS_DEFINE_ROW_KERNELS(float)
SHIFTNAS_DEFINE_ROW_KERNELS(double)
SHIFTNAS_DEFINE_ROW_KERNELS(c10::BFloat16)
SHIFTNAS_DEFINE_ROW_KERNELS(c10::Half)
#undef SHIFTNAS_DEFINE_ROW_KERNELS

// Rows per parallel chunk: about 32K elements (ATen's usual grain), so small
// problems stay on the calling thread instead of paying the fork/join cost.
constexpr int64_t kGrainElems = 32768;
int64_t row_grain(int64_t D) {
  return std::max<int64_t>(1, kGrainElems / std::max<int64_t>(D, 1));
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> elastic_layer_norm_forward_cpu(
    const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, int64_t active,
    double eps) {
  const int64_t N = x.size(0);
  const int64_t D = active;
  const auto acc = acc_dtype(x.scalar_type());
  at::Tensor y = at::empty({N, D}, x.options());
  at::Tensor mean = at::empty({N}, x.options().dtype(acc));
  at::Tensor rstd = at::empty({N}, x.options().dtype(acc));
  // No-ops (same tensor back) for float32/float64 weights.
  const at::Tensor w = weight.narrow(0, 0, D).to(acc).contiguous();
  const at::Tensor b = bias.narrow(0, 0, D).to(acc).contiguous();
  const int64_t xs = row_stride(x);

  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kBFloat16, at::kHalf, x.scalar_type(), "elastic_layer_norm_forward_cpu", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        const scalar_t* xp = x.const_data_ptr<scalar_t>();
        const acc_t* wp = w.const_data_ptr<acc_t>();
        const acc_t* bp = b.const_data_ptr<acc_t>();
        scalar_t* yp = y.mutable_data_ptr<scalar_t>();
        acc_t* mp = mean.mutable_data_ptr<acc_t>();
        acc_t* rp = rstd.mutable_data_ptr<acc_t>();
        const acc_t e = static_cast<acc_t>(eps);
        at::parallel_for(0, N, row_grain(D), [&](int64_t r0, int64_t r1) {
          std::vector<acc_t> scratch(std::is_same_v<scalar_t, acc_t> ? 0 : D);
          forward_rows(xp, xs, wp, bp, yp, mp, rp, r0, r1, D, e, scratch.data());
        });
      });
  return {y, mean, rstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> elastic_layer_norm_backward_cpu(
    const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& weight,
    const at::Tensor& mean, const at::Tensor& rstd, int64_t active) {
  const int64_t N = x.size(0);
  const int64_t C = x.size(1);
  const int64_t D = active;
  const int64_t Cmax = weight.size(0);
  const auto acc = acc_dtype(x.scalar_type());
  const at::Tensor w = weight.narrow(0, 0, D).to(acc).contiguous();
  const at::Tensor m = mean.to(acc).contiguous();
  const at::Tensor rs = rstd.to(acc).contiguous();
  at::Tensor grad_x = at::empty({N, C}, x.options());

  // Fixed row blocks, one private dw/db partial per block (see header note).
  const int64_t grain = row_grain(D);
  const int64_t blocks =
      std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), (N + grain - 1) / grain));
  const int64_t rows_per_block = (N + blocks - 1) / blocks;
  at::Tensor partial = at::zeros({blocks, 2, D}, x.options().dtype(acc));

  at::Tensor grad_w = at::empty({Cmax}, weight.options());
  at::Tensor grad_b = at::empty({Cmax}, weight.options());
  const int64_t xs = row_stride(x);
  const int64_t gs = row_stride(grad_y);

  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kBFloat16, at::kHalf, x.scalar_type(), "elastic_layer_norm_backward_cpu", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        const scalar_t* xp = x.const_data_ptr<scalar_t>();
        const scalar_t* gp = grad_y.const_data_ptr<scalar_t>();
        const acc_t* wp = w.const_data_ptr<acc_t>();
        const acc_t* mp = m.const_data_ptr<acc_t>();
        const acc_t* rp = rs.const_data_ptr<acc_t>();
        scalar_t* dxp = grad_x.mutable_data_ptr<scalar_t>();
        acc_t* pp = partial.mutable_data_ptr<acc_t>();

        at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
          std::vector<acc_t> scratch(std::is_same_v<scalar_t, acc_t> ? 0 : 2 * D);
          for (int64_t blk = b0; blk < b1; ++blk) {
            const int64_t r0 = blk * rows_per_block;
            const int64_t r1 = std::min(N, r0 + rows_per_block);
            if (r0 >= r1) continue;
            acc_t* dw = pp + blk * 2 * D;
            backward_rows(xp, xs, gp, gs, wp, mp, rp, dxp, C, dw, dw + D, r0, r1, D,
                          scratch.data());
          }
        });

        // Reduce the per-block partials in block order (deterministic).
        scalar_t* gwp = grad_w.mutable_data_ptr<scalar_t>();
        scalar_t* gbp = grad_b.mutable_data_ptr<scalar_t>();
        for (int64_t c = 0; c < D; ++c) {
          acc_t sw = 0, sb = 0;
          for (int64_t blk = 0; blk < blocks; ++blk) {
            sw += pp[blk * 2 * D + c];
            sb += pp[blk * 2 * D + D + c];
          }
          gwp[c] = static_cast<scalar_t>(sw);
          gbp[c] = static_cast<scalar_t>(sb);
        }
        for (int64_t c = D; c < Cmax; ++c) {
          gwp[c] = static_cast<scalar_t>(0);
          gbp[c] = static_cast<scalar_t>(0);
        }
      });
  return {grad_x, grad_w, grad_b};
}

}  // namespace shiftnas
