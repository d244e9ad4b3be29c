// CPU implementation of the elastic depthwise conv (see elastic_dwconv.h).
//
// Two kernels, measured against F.conv2d (mkldnn) on the CNN supernets'
// shapes (bench/bench_cpu_ops.py):
//
// Forward, fp32 accumulation (float32 / bfloat16 / float16): channel-blocked.
//  * 16 channels of one image at a time are transposed (in registers, 16x16)
//    into a zero-padded [Hp][Wp][16] scratch, so every tap is an aligned,
//    full-width vector FMA with no wasted lanes for either stride: mkldnn's
//    nChw16c layout, with the reorders done per block in L1/L2 instead of as
//    passes over the whole tensor. See forward_blocked.
//
// Backward, fp32 accumulation, planes up to 160x160: channel-blocked as well
//  (see backward_blocked).
//
// Backward otherwise (float64, huge planes) and the float64 forward: flat
// grid, one plane at a time.
//  * Each (b, c) plane is copied once into a zero-padded scratch plane in the
//    accumulation type. With stride 2 the padded plane is stored as its four
//    polyphase components (even/odd rows x even/odd columns), so every tap of
//    either stride is a unit-stride read:
//      y_flat[o] = bias + sum_{i,j} w[i,j] * phase(i%s, j%s)[o + (i/s)*Wq + j/s]
//    over a flat grid o = oh*Wq + ow (Wq = padded width / s; the columns
//    ow >= Wo are computed and dropped). On the flat grid one vector spans
//    row ends: a 7x7 output with k=3 is 63 flat outputs, four AVX-512
//    vectors, instead of seven rows each 7/16 full.
//  * grad_x is the adjoint of the same gather. With grad_y laid out on the
//    same flat grid (zeros in the dropped columns and in a front margin),
//      gx_phase(a,b)[q] = sum_{i%s==a, j%s==b} w[i,j] * gy_flat[q - (i/s)*Wq - j/s]
//    which is again unit-stride reads for both strides, with no scatter.
//    Register blocking keeps up to 4 output vectors in registers across taps.
//  * grad_weight[c,i,j] = sum_b dot(gy_flat, phase(i%s,j%s) + offset(i,j)):
//    one sweep per kernel row keeps that row's k accumulators (two sets, to
//    hide FMA latency) in registers and reads grad_y once per k taps.
//  * Backward parallelises over channels and loops over the batch inside, so
//    each channel's weight/bias gradient is summed by one thread in batch
//    order: deterministic for any thread count, with no partial buffers, and
//    written straight into the full-size [Cmax] buffers.
//  * The scratch buffers are zeroed once per parallel chunk; later planes
//    only overwrite interior positions, so the padding stays zero for free.
//  * bfloat16/float16 are widened while being copied into scratch and share
//    the fp32 kernels; float64 runs the same code on 8-lane vectors.
#include "elastic_dwconv.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "acc_type.h"
#include "cpu_simd.h"

namespace shiftnas {
namespace {

using namespace simd;  // NOLINT(build/namespaces): cpu_simd.h's small toolkit

constexpr int kBlock = 4;  // output vectors held in registers per block

// Plane geometry and scratch sizes, shared by forward and backward.
struct Geometry {
  int64_t H, W, K, S, P;  // input plane, kernel, stride, padding
  int64_t Ho, Wo;         // output plane
  int64_t Hq, Wq;         // rows / columns of each polyphase component of the padded plane
  int64_t nvec;           // vectors covering the Ho * Wq flat outputs
  int64_t phase_len;      // elements per phase component, with slack for block overrun
  int64_t margin;         // zeros in front of the flat grad_y (the gather reads q - offset)
  int64_t gy_len;         // elements of the flat grad_y buffer, margin included
  int64_t out_len;        // elements of the flat forward output buffer
};

int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

Geometry make_geometry(int64_t H, int64_t W, int64_t K, int64_t S, int64_t P, int64_t lanes) {
  Geometry g{};
  g.H = H;
  g.W = W;
  g.K = K;
  g.S = S;
  g.P = P;
  g.Ho = (H + 2 * P - K) / S + 1;
  g.Wo = (W + 2 * P - K) / S + 1;
  g.Hq = (H + 2 * P + S - 1) / S;
  g.Wq = (W + 2 * P + S - 1) / S;
  g.nvec = (g.Ho * g.Wq + lanes - 1) / lanes;
  const int64_t off_max = ((K - 1) / S) * g.Wq + (K - 1) / S;
  // Block loops run at most two vectors past their range (rounding up to a
  // vector, and a 3-vector tail run as a 4-vector block).
  const int64_t slack = kBlock * lanes;
  g.phase_len = round_up(std::max(g.nvec * lanes + off_max, g.Hq * g.Wq) + slack, lanes);
  g.margin = round_up(off_max, lanes);
  g.gy_len = g.margin + g.phase_len + slack;
  g.out_len = g.nvec * lanes + slack;
  return g;
}

// ---------------------------------------------------------------------------
// Vector kernels (inlined into the multi-versioned entry points below).

// NV vectors of flat outputs starting at o, accumulated over all k*k taps.
template <int KC, int S, int NV, typename acc_t>
SHIFTNAS_INLINE void forward_block(const acc_t* SHIFTNAS_RESTRICT X, const acc_t* SHIFTNAS_RESTRICT w,
                                   acc_t bias, acc_t* SHIFTNAS_RESTRICT out, int K, int64_t PS,
                                   int64_t Wq, int64_t o) {
  constexpr int64_t V = kLanes<acc_t>;
  simd_t<acc_t> acc[NV];
  for (int v = 0; v < NV; ++v) acc[v] = vsplat(bias);
  for (int i = 0; i < K; ++i) {
    const acc_t* row = X + (i % S) * S * PS + (i / S) * Wq + o;
#pragma GCC unroll 8
    for (int j = 0; j < K; ++j) {
      const acc_t* src = row + (j % S) * PS + j / S;
      const acc_t wv = w[i * K + j];
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[v] += wv * vload(src + v * V);
    }
  }
  for (int v = 0; v < NV; ++v) vstore(out + o + v * V, acc[v]);
}

// KC: kernel size known at compile time (3, 5, 7), or 0 to read it from g.
template <int KC, int S, typename acc_t>
SHIFTNAS_INLINE void forward_plane(const acc_t* SHIFTNAS_RESTRICT X, const acc_t* SHIFTNAS_RESTRICT w,
                                   acc_t bias, acc_t* SHIFTNAS_RESTRICT out, const Geometry& g) {
  constexpr int64_t V = kLanes<acc_t>;
  const int K = KC > 0 ? KC : static_cast<int>(g.K);
  const int64_t PS = g.phase_len, Wq = g.Wq, n = g.nvec;
  int64_t v = 0;
  for (; v + kBlock <= n; v += kBlock) forward_block<KC, S, kBlock>(X, w, bias, out, K, PS, Wq, v * V);
  switch (n - v) {  // a 3-vector tail runs as one full block: cheaper than a 2 + 1 split
    case 3:
      forward_block<KC, S, kBlock>(X, w, bias, out, K, PS, Wq, v * V);
      break;
    case 2:
      forward_block<KC, S, 2>(X, w, bias, out, K, PS, Wq, v * V);
      break;
    case 1:
      forward_block<KC, S, 1>(X, w, bias, out, K, PS, Wq, v * V);
      break;
    default:
      break;
  }
}

// NV vectors of phase (a, b) of the padded grad_x, starting at q.
template <int KC, int S, int NV, typename acc_t>
SHIFTNAS_INLINE void grad_x_block(const acc_t* SHIFTNAS_RESTRICT G, const acc_t* SHIFTNAS_RESTRICT w,
                                  acc_t* SHIFTNAS_RESTRICT dst, int K, int a, int b, int64_t Wq,
                                  int64_t q) {
  constexpr int64_t V = kLanes<acc_t>;
  simd_t<acc_t> acc[NV];
  for (int v = 0; v < NV; ++v) acc[v] = simd_t<acc_t>{};
  for (int i = a; i < K; i += S) {
    const acc_t* row = G + q - (i / S) * Wq;
#pragma GCC unroll 8
    for (int j = b; j < K; j += S) {
      const acc_t* src = row - j / S;
      const acc_t wv = w[i * K + j];
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[v] += wv * vload(src + v * V);
    }
  }
  for (int v = 0; v < NV; ++v) vstore(dst + q + v * V, acc[v]);
}

// G points at grad_y's flat grid (after the zero margin); GX receives the
// S*S phase components of the padded grad_x (only rows holding input rows).
template <int KC, int S, typename acc_t>
SHIFTNAS_INLINE void grad_x_plane(const acc_t* SHIFTNAS_RESTRICT G, const acc_t* SHIFTNAS_RESTRICT w,
                                  acc_t* SHIFTNAS_RESTRICT GX, const Geometry& g) {
  constexpr int64_t V = kLanes<acc_t>;
  const int K = KC > 0 ? KC : static_cast<int>(g.K);
  const int64_t PS = g.phase_len, Wq = g.Wq, P = g.P, last = g.P + g.H - 1;
  for (int a = 0; a < S; ++a) {
    // Padded rows P .. P+H-1 hold the input; those with row % S == a are this phase's.
    const int64_t first_row = P + ((a - P) % S + S) % S;
    if (first_row > last) continue;
    const int64_t q0 = (first_row / S) * Wq;
    const int64_t q1 = ((last - ((last - a) % S + S) % S) / S + 1) * Wq;
    const int64_t n = (q1 - q0 + V - 1) / V;
    for (int b = 0; b < S; ++b) {
      acc_t* dst = GX + (a * S + b) * PS;
      int64_t v = 0;
      for (; v + kBlock <= n; v += kBlock) {
        grad_x_block<KC, S, kBlock>(G, w, dst, K, a, b, Wq, q0 + v * V);
      }
      switch (n - v) {
        case 3:
          grad_x_block<KC, S, kBlock>(G, w, dst, K, a, b, Wq, q0 + v * V);
          break;
        case 2:
          grad_x_block<KC, S, 2>(G, w, dst, K, a, b, Wq, q0 + v * V);
          break;
        case 1:
          grad_x_block<KC, S, 1>(G, w, dst, K, a, b, Wq, q0 + v * V);
          break;
        default:
          break;
      }
    }
  }
}

// dwv[jj] += lane-wise partial dot(G, tap (i, j0 + jj)) for JB taps of
// kernel row i. dwv holds one vector per tap and is reduced once per channel
// after the whole batch (a horizontal sum per tap and plane cost as much as
// the dot products themselves on 7x7 planes).
template <int JB, int S, typename acc_t>
SHIFTNAS_INLINE void grad_w_taps(const acc_t* SHIFTNAS_RESTRICT X, const acc_t* SHIFTNAS_RESTRICT G,
                                 int i, int j0, int64_t PS, int64_t Wq, int64_t n,
                                 acc_t* SHIFTNAS_RESTRICT dwv) {
  constexpr int64_t V = kLanes<acc_t>;
  const acc_t* src[JB];
  simd_t<acc_t> a0[JB], a1[JB];
  for (int jj = 0; jj < JB; ++jj) {
    const int j = j0 + jj;
    src[jj] = X + ((i % S) * S + (j % S)) * PS + (i / S) * Wq + j / S;
    a0[jj] = simd_t<acc_t>{};
    a1[jj] = simd_t<acc_t>{};
  }
  int64_t v = 0;
  for (; v + 2 <= n; v += 2) {
    const simd_t<acc_t> g0 = vload(G + v * V);
    const simd_t<acc_t> g1 = vload(G + v * V + V);
#pragma GCC unroll 8
    for (int jj = 0; jj < JB; ++jj) {
      a0[jj] += g0 * vload(src[jj] + v * V);
      a1[jj] += g1 * vload(src[jj] + v * V + V);
    }
  }
  if (v < n) {
    const simd_t<acc_t> g0 = vload(G + v * V);
#pragma GCC unroll 8
    for (int jj = 0; jj < JB; ++jj) a0[jj] += g0 * vload(src[jj] + v * V);
  }
  for (int jj = 0; jj < JB; ++jj) {
    acc_t* d = dwv + jj * V;
    vstore(d, vload(d) + (a0[jj] + a1[jj]));
  }
}

// dwv: k*k vectors of lane-wise partial sums (see grad_w_taps).
template <int KC, int S, typename acc_t>
SHIFTNAS_INLINE void grad_w_plane(const acc_t* SHIFTNAS_RESTRICT X, const acc_t* SHIFTNAS_RESTRICT G,
                                  acc_t* SHIFTNAS_RESTRICT dwv, const Geometry& g) {
  constexpr int64_t V = kLanes<acc_t>;
  if constexpr (KC > 0) {
    for (int i = 0; i < KC; ++i) {
      grad_w_taps<KC, S>(X, G, i, 0, g.phase_len, g.Wq, g.nvec, dwv + i * KC * V);
    }
  } else {
    const int K = static_cast<int>(g.K);
    for (int i = 0; i < K; ++i) {
      for (int j = 0; j < K; ++j) {
        grad_w_taps<1, S>(X, G, i, j, g.phase_len, g.Wq, g.nvec, dwv + (i * K + j) * V);
      }
    }
  }
}

// dbv (one vector) += lane-wise partial sums of G.
template <typename acc_t>
SHIFTNAS_INLINE void flat_sum(const acc_t* SHIFTNAS_RESTRICT G, int64_t n,
                              acc_t* SHIFTNAS_RESTRICT dbv) {
  constexpr int64_t V = kLanes<acc_t>;
  simd_t<acc_t> a0 = {}, a1 = {};
  int64_t v = 0;
  for (; v + 2 <= n; v += 2) {
    a0 += vload(G + v * V);
    a1 += vload(G + v * V + V);
  }
  if (v < n) a0 += vload(G + v * V);
  vstore(dbv, vload(dbv) + (a0 + a1));
}

// Reduces k*k (or one) partial-sum vectors to scalars.
template <typename acc_t>
SHIFTNAS_INLINE void reduce_partials(const acc_t* SHIFTNAS_RESTRICT v, int64_t n,
                                     acc_t* SHIFTNAS_RESTRICT out) {
  for (int64_t t = 0; t < n; ++t) out[t] = hsum<acc_t>(vload(v + t * kLanes<acc_t>));
}

// Kernel size / stride dispatch: 3, 5 and 7 (the supernets' sizes) get
// fully unrolled tap loops; any other size runs the generic loops.
#define SHIFTNAS_DWCONV_DISPATCH(g, FN, ...)                    \
  do {                                                          \
    if ((g).S == 1) {                                           \
      switch ((g).K) {                                          \
        case 3: FN<3, 1>(__VA_ARGS__); break;                   \
        case 5: FN<5, 1>(__VA_ARGS__); break;                   \
        case 7: FN<7, 1>(__VA_ARGS__); break;                   \
        default: FN<0, 1>(__VA_ARGS__); break;                  \
      }                                                         \
    } else {                                                    \
      switch ((g).K) {                                          \
        case 3: FN<3, 2>(__VA_ARGS__); break;                   \
        case 5: FN<5, 2>(__VA_ARGS__); break;                   \
        case 7: FN<7, 2>(__VA_ARGS__); break;                   \
        default: FN<0, 2>(__VA_ARGS__); break;                  \
      }                                                         \
    }                                                           \
  } while (0)

// Non-template, per-accumulation-type entry points: the unit that gets
// multi-versioned. One call per plane, so the ifunc indirection is noise.
#define SHIFTNAS_DEFINE_PLANE_KERNELS(T)                                                       \
  SHIFTNAS_CLONES void grad_x_plane_kernel(const T* G, const T* w, T* GX, const Geometry& g) {  \
    SHIFTNAS_DWCONV_DISPATCH(g, grad_x_plane, G, w, GX, g);                                    \
  }                                                                                            \
  SHIFTNAS_CLONES void grad_w_plane_kernel(const T* X, const T* G, T* dwv, const Geometry& g) { \
    SHIFTNAS_DWCONV_DISPATCH(g, grad_w_plane, X, G, dwv, g);                                   \
  }                                                                                            \
  SHIFTNAS_CLONES void flat_sum_kernel(const T* G, int64_t n, T* dbv) { flat_sum<T>(G, n, dbv); } \
  SHIFTNAS_CLONES void reduce_partials_kernel(const T* v, int64_t n, T* out) {                 \
    reduce_partials<T>(v, n, out);                                                             \
  }

SHIFTNAS_DEFINE_PLANE_KERNELS(float)
SHIFTNAS_DEFINE_PLANE_KERNELS(double)
// The flat-grid forward only serves float64 (fp32 runs forward_blocked).
SHIFTNAS_CLONES void forward_plane_kernel(const double* X, const double* w, double bias,
                                          double* out, const Geometry& g) {
  SHIFTNAS_DWCONV_DISPATCH(g, forward_plane, X, w, bias, out, g);
}
#undef SHIFTNAS_DEFINE_PLANE_KERNELS
#undef SHIFTNAS_DWCONV_DISPATCH

// ---------------------------------------------------------------------------
// Layout moves between the tensors and the scratch grids (widen / narrow).
//
// Rows of the supernets' planes are short (7..112 elements), so per-row loop
// overhead and scalar tails used to cost as much as the k=3 convolution on
// 7x7 planes. Rows therefore move as whole vectors: a vector that runs past
// a row's end writes zeros (loads) or scratch values (stores) into places
// that a later row overwrites anyway. Stores never run past their own plane
// (the next one may belong to another thread), and loads never read past the
// end of the tensor.

template <typename acc_t>
struct LaneIndex;
template <>
struct LaneIndex<float> {
  typedef int32_t elem;
  typedef int32_t type __attribute__((vector_size(64)));
};
template <>
struct LaneIndex<double> {
  typedef int64_t elem;
  typedef int64_t type __attribute__((vector_size(64)));
};
template <typename acc_t>
using index_t = typename LaneIndex<acc_t>::type;

// {k*step + offset}: lane indices for selects and shuffles.
template <typename acc_t>
SHIFTNAS_INLINE index_t<acc_t> lane_ramp(int64_t step, int64_t offset) {
  index_t<acc_t> r;
  for (int64_t i = 0; i < kLanes<acc_t>; ++i) {
    r[i] = static_cast<typename LaneIndex<acc_t>::elem>(i * step + offset);
  }
  return r;
}

// Lanes >= n set to zero.
template <typename acc_t>
SHIFTNAS_INLINE simd_t<acc_t> keep_first(simd_t<acc_t> v, int64_t n) {
  using elem = typename LaneIndex<acc_t>::elem;
  const elem m = static_cast<elem>(std::min<int64_t>(n, kLanes<acc_t>));
  return lane_ramp<acc_t>(1, 0) < (index_t<acc_t>{} + m) ? v : simd_t<acc_t>{};
}

template <typename T, typename acc_t>
SHIFTNAS_INLINE simd_t<acc_t> load_widen(const T* p) {
  if constexpr (std::is_same_v<T, acc_t>) {
    return vload(p);
  } else if constexpr (std::is_same_v<T, c10::BFloat16>) {
    return simd::load_bf16(p);
  } else {
    acc_t tmp[kLanes<acc_t>];
    for (int64_t i = 0; i < kLanes<acc_t>; ++i) tmp[i] = static_cast<acc_t>(p[i]);
    return vload(tmp);
  }
}

template <typename T, typename acc_t>
SHIFTNAS_INLINE void store_narrow(T* p, simd_t<acc_t> v) {
  if constexpr (std::is_same_v<T, acc_t>) {
    vstore(p, v);
  } else if constexpr (std::is_same_v<T, c10::BFloat16>) {
    simd::store_bf16(p, v);
  } else {
    acc_t tmp[kLanes<acc_t>];
    vstore(tmp, v);
    for (int64_t i = 0; i < kLanes<acc_t>; ++i) p[i] = static_cast<T>(tmp[i]);
  }
}

// n2 elements of src from `at` as two vectors, zero past the end of the
// tensor (src_end) instead of reading it.
template <typename T, typename acc_t>
SHIFTNAS_INLINE void load_pair(const T* at, const T* src_end, int64_t n2, simd_t<acc_t>& a,
                               simd_t<acc_t>& b) {
  constexpr int64_t V = kLanes<acc_t>;
  if (at + 2 * V <= src_end) {
    a = load_widen<T, acc_t>(at);
    b = load_widen<T, acc_t>(at + V);
  } else {
    acc_t tmp[2 * V] = {};
    for (int64_t k = 0; k < std::min<int64_t>(n2, 2 * V); ++k) tmp[k] = static_cast<acc_t>(at[k]);
    a = vload(tmp);
    b = vload(tmp + V);
  }
}

// dst[0, n) = src[0, n) widened, then zeros up to the next whole vector.
template <typename T, typename acc_t>
SHIFTNAS_INLINE void load_row(acc_t* SHIFTNAS_RESTRICT dst, const T* SHIFTNAS_RESTRICT src,
                              int64_t n, const T* src_end) {
  constexpr int64_t V = kLanes<acc_t>;
  int64_t i = 0;
  for (; i + V <= n; i += V) vstore(dst + i, load_widen<T, acc_t>(src + i));
  if (i < n) {
    simd_t<acc_t> a;
    if (src + i + V <= src_end) {
      a = load_widen<T, acc_t>(src + i);
    } else {
      acc_t tmp[V] = {};
      for (int64_t k = 0; k < n - i; ++k) tmp[k] = static_cast<acc_t>(src[i + k]);
      a = vload(tmp);
    }
    vstore(dst + i, keep_first<acc_t>(a, n - i));
  }
}

// dst[0, n) = src[0, n) narrowed. The last vector may write whole (past n)
// when that stays below dst_end: the extra elements belong to rows that are
// written later.
template <typename T, typename acc_t>
SHIFTNAS_INLINE void store_row(T* SHIFTNAS_RESTRICT dst, const acc_t* SHIFTNAS_RESTRICT src,
                               int64_t n, const T* dst_end) {
  constexpr int64_t V = kLanes<acc_t>;
  int64_t i = 0;
  for (; i + V <= n; i += V) store_narrow<T, acc_t>(dst + i, vload(src + i));
  if (i < n) {
    if (dst + i + V <= dst_end) {
      store_narrow<T, acc_t>(dst + i, vload(src + i));
    } else {
      for (; i < n; ++i) dst[i] = static_cast<T>(src[i]);
    }
  }
}

// Interior of the padded plane (all phases) <- one [H, W] plane of x. Rows
// go in increasing order, so the zeros a row's last vector writes past its
// end land in padding or in rows that are written later.
template <typename T, typename acc_t>
SHIFTNAS_INLINE void load_plane_impl(const T* SHIFTNAS_RESTRICT x, const T* x_end,
                                     acc_t* SHIFTNAS_RESTRICT X, const Geometry& g) {
  constexpr int64_t V = kLanes<acc_t>;
  const int64_t S = g.S, P = g.P, W = g.W, PS = g.phase_len, Wq = g.Wq;
  for (int64_t h = 0; h < g.H; ++h) {
    const T* src = x + h * W;
    const int64_t pr = h + P;
    acc_t* row = X + (pr % S) * S * PS + (pr / S) * Wq;
    if (S == 1) {
      load_row<T, acc_t>(row + P, src, W, x_end);
      continue;
    }
    // Stride 2: even input columns w = 2m go to phase b = P % 2 at column
    // m + P/2, odd ones to phase (P+1) % 2 at column m + (P+1)/2.
    acc_t* even = row + (P & 1) * PS + (P >> 1);
    acc_t* odd = row + ((P + 1) & 1) * PS + ((P + 1) >> 1);
    const index_t<acc_t> pick_even = lane_ramp<acc_t>(2, 0), pick_odd = lane_ramp<acc_t>(2, 1);
    for (int64_t m = 0; 2 * m < W; m += V) {
      const int64_t left = W - 2 * m;
      simd_t<acc_t> a, b;
      load_pair<T, acc_t>(src + 2 * m, x_end, left, a, b);
      vstore(even + m, keep_first<acc_t>(__builtin_shuffle(a, b, pick_even), (left + 1) / 2));
      vstore(odd + m, keep_first<acc_t>(__builtin_shuffle(a, b, pick_odd), left / 2));
    }
  }
}

// One [H, W] plane of grad_x <- interior of the padded phases (inverse of
// load_plane). `row_tmp` holds round_up(W, 2 lanes) elements.
template <typename T, typename acc_t>
SHIFTNAS_INLINE void store_plane_impl(const acc_t* SHIFTNAS_RESTRICT X, T* SHIFTNAS_RESTRICT x,
                                      acc_t* SHIFTNAS_RESTRICT row_tmp, const Geometry& g) {
  constexpr int64_t V = kLanes<acc_t>;
  const int64_t S = g.S, P = g.P, W = g.W, PS = g.phase_len, Wq = g.Wq;
  for (int64_t h = 0; h < g.H; ++h) {
    T* dst = x + h * W;
    const T* plane_end = x + g.H * W;
    const int64_t pr = h + P;
    const acc_t* row = X + (pr % S) * S * PS + (pr / S) * Wq;
    if (S == 1) {
      store_row<T, acc_t>(dst, row + P, W, plane_end);
      continue;
    }
    const acc_t* even = row + (P & 1) * PS + (P >> 1);
    const acc_t* odd = row + ((P + 1) & 1) * PS + ((P + 1) >> 1);
    const index_t<acc_t> lo = lane_ramp<acc_t>(1, 0) / 2 + (lane_ramp<acc_t>(1, 0) % 2) * V;
    const index_t<acc_t> hi = lo + V / 2;
    for (int64_t m = 0; 2 * m < W; m += V) {
      const simd_t<acc_t> e = vload(even + m), o = vload(odd + m);
      vstore(row_tmp + 2 * m, __builtin_shuffle(e, o, lo));
      vstore(row_tmp + 2 * m + V, __builtin_shuffle(e, o, hi));
    }
    store_row<T, acc_t>(dst, row_tmp, W, plane_end);
  }
}

// [Ho, Wo] plane of y <- flat grid (drops the columns ow >= Wo).
template <typename T, typename acc_t>
SHIFTNAS_INLINE void store_output_impl(const acc_t* SHIFTNAS_RESTRICT out, T* SHIFTNAS_RESTRICT y,
                                       const Geometry& g) {
  const T* plane_end = y + g.Ho * g.Wo;
  for (int64_t oh = 0; oh < g.Ho; ++oh) {
    store_row<T, acc_t>(y + oh * g.Wo, out + oh * g.Wq, g.Wo, plane_end);
  }
}

// Flat grid <- [Ho, Wo] plane of grad_y; the dropped columns stay zero (a
// row's zero tail runs into the next row's start, which is written later).
template <typename T, typename acc_t>
SHIFTNAS_INLINE void load_grad_y_impl(const T* SHIFTNAS_RESTRICT gy, const T* gy_end,
                                      acc_t* SHIFTNAS_RESTRICT G, const Geometry& g) {
  for (int64_t oh = 0; oh < g.Ho; ++oh) {
    load_row<T, acc_t>(G + oh * g.Wq, gy + oh * g.Wo, g.Wo, gy_end);
  }
}

#define SHIFTNAS_DEFINE_LAYOUT_KERNELS(T)                                                    \
  SHIFTNAS_CLONES void load_plane(const T* x, const T* x_end, at::opmath_type<T>* X,         \
                                  const Geometry& g) {                                       \
    load_plane_impl<T, at::opmath_type<T>>(x, x_end, X, g);                                  \
  }                                                                                          \
  SHIFTNAS_CLONES void store_plane(const at::opmath_type<T>* X, T* x,                        \
                                   at::opmath_type<T>* row_tmp, const Geometry& g) {         \
    store_plane_impl<T, at::opmath_type<T>>(X, x, row_tmp, g);                               \
  }                                                                                          \
  SHIFTNAS_CLONES void load_grad_y(const T* gy, const T* gy_end, at::opmath_type<T>* G,      \
                                   const Geometry& g) {                                      \
    load_grad_y_impl<T, at::opmath_type<T>>(gy, gy_end, G, g);                               \
  }

SHIFTNAS_DEFINE_LAYOUT_KERNELS(float)
SHIFTNAS_DEFINE_LAYOUT_KERNELS(double)
SHIFTNAS_DEFINE_LAYOUT_KERNELS(c10::BFloat16)
SHIFTNAS_DEFINE_LAYOUT_KERNELS(c10::Half)
SHIFTNAS_CLONES void store_output(const double* out, double* y, const Geometry& g) {
  store_output_impl<double, double>(out, y, g);
}
#undef SHIFTNAS_DEFINE_LAYOUT_KERNELS

// Planes (forward) or channels (backward) per parallel chunk: about 64K
// multiply-adds, so small problems stay on the calling thread.
constexpr int64_t kGrainMacs = int64_t{1} << 16;
int64_t grain_for(int64_t macs_per_item) {
  return std::max<int64_t>(1, kGrainMacs / std::max<int64_t>(macs_per_item, 1));
}

int64_t lanes_for(at::ScalarType acc) { return acc == at::kDouble ? kLanes<double> : kLanes<float>; }

// ---------------------------------------------------------------------------
// Channel-blocked forward (fp32 accumulation): 16 channels of one image at a
// time, transposed into a zero-padded [Hp][Wp][16] scratch, so every tap is
// a full, aligned vector FMA with no wasted lanes, for either stride (the
// flat-grid kernel above wastes the (k-1)/(W+k-1) padding columns and reads
// cache-line-splitting vectors: on 7x7 planes with k=7 it ran 2.6x slower
// than mkldnn). This is mkldnn's nChw16c layout, with the reorders done per
// block in L1 instead of as passes over the whole tensor.

constexpr int64_t kCB = 16;  // channels per block = fp32 lanes
using vf = simd_t<float>;
typedef int32_t vi __attribute__((vector_size(64)));

// Permute indices of transpose round D (see transpose16).
template <int D, bool kHi>
SHIFTNAS_INLINE vi transpose_index() {
  vi r;
  for (int k = 0; k < 16; ++k) {
    if (kHi) {
      r[k] = (k & D) ? 16 + k : k + D;
    } else {
      r[k] = (k & D) ? 16 + k - D : k;
    }
  }
  return r;
}

template <int D>
SHIFTNAS_INLINE void transpose_round(vf* r) {
  const vi lo = transpose_index<D, false>(), hi = transpose_index<D, true>();
  for (int i = 0; i < 16; ++i) {
    if (i & D) continue;
    const vf a = r[i], b = r[i + D];
    r[i] = __builtin_shuffle(a, b, lo);
    r[i + D] = __builtin_shuffle(a, b, hi);
  }
}

// In-register 16x16 transpose, r[i][k] -> r[k][i]: swap the off-diagonal
// D x D blocks for D = 8, 4, 2, 1 (one two-source permute per row and round).
SHIFTNAS_INLINE void transpose16(vf* r) {
  transpose_round<8>(r);
  transpose_round<4>(r);
  transpose_round<2>(r);
  transpose_round<1>(r);
}

struct BlockGeometry {
  int64_t H, W, K, S, P, Ho, Wo, Hp, Wp;
  int64_t xi_len;  // floats of the padded [Hp][Wp][16] input block
  int64_t yi_len;  // floats of the [Ho*Wo (rounded up to 16)][16] output block
};

BlockGeometry make_block_geometry(const Geometry& g) {
  BlockGeometry bg{};
  bg.H = g.H;
  bg.W = g.W;
  bg.K = g.K;
  bg.S = g.S;
  bg.P = g.P;
  bg.Ho = g.Ho;
  bg.Wo = g.Wo;
  bg.Hp = g.H + 2 * g.P;
  bg.Wp = g.W + 2 * g.P;
  bg.xi_len = bg.Hp * bg.Wp * kCB;
  bg.yi_len = round_up(g.Ho * g.Wo, kCB) * kCB;
  return bg;
}

// R consecutive outputs of row oh from column ow, all 16 channels. Per
// kernel row the k weights stay in registers and each input vector is loaded
// once and used by every (output, tap) pair that reads it: (R-1)*S + k loads
// per R*k FMAs. One load per FMA (a memory operand per tap) was load-bound:
// 14.8 us per tap for 7x7, C=192, B=64 on one thread; this takes 10.7 us.
template <int KC, int S, int R>
SHIFTNAS_INLINE void block_outputs(const float* SHIFTNAS_RESTRICT Xi, const float* SHIFTNAS_RESTRICT w16,
                                   vf bias, float* SHIFTNAS_RESTRICT Yi, int64_t Wp, int64_t Wo,
                                   int64_t oh, int64_t ow) {
  static_assert(KC > 0, "the generic kernel size uses block_outputs_any");
  vf acc[R];
  for (int r = 0; r < R; ++r) acc[r] = bias;
  for (int i = 0; i < KC; ++i) {
    const float* row = Xi + ((oh * S + i) * Wp + ow * S) * kCB;
    vf wr[KC];
#pragma GCC unroll 8
    for (int j = 0; j < KC; ++j) wr[j] = vload(w16 + (i * KC + j) * kCB);
#pragma GCC unroll 32
    for (int t = 0; t < (R - 1) * S + KC; ++t) {
      const vf v = vload(row + t * kCB);
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        const int j = t - r * S;
        if (j >= 0 && j < KC) acc[r] += wr[j] * v;
      }
    }
  }
  for (int r = 0; r < R; ++r) vstore(Yi + (oh * Wo + ow + r) * kCB, acc[r]);
}

// Any kernel size: one output at a time.
template <int S>
SHIFTNAS_INLINE void block_outputs_any(const float* SHIFTNAS_RESTRICT Xi,
                                       const float* SHIFTNAS_RESTRICT w16, vf bias,
                                       float* SHIFTNAS_RESTRICT Yi, int K, int64_t Wp, int64_t Wo,
                                       int64_t oh, int64_t ow) {
  vf acc = bias;
  for (int i = 0; i < K; ++i) {
    const float* row = Xi + ((oh * S + i) * Wp + ow * S) * kCB;
    for (int j = 0; j < K; ++j) acc += vload(w16 + (i * K + j) * kCB) * vload(row + j * kCB);
  }
  vstore(Yi + (oh * Wo + ow) * kCB, acc);
}

template <int KC, int S>
SHIFTNAS_INLINE void block_conv(const float* SHIFTNAS_RESTRICT Xi, const float* SHIFTNAS_RESTRICT w16,
                                vf bias, float* SHIFTNAS_RESTRICT Yi, const BlockGeometry& bg) {
  const int64_t Wp = bg.Wp, Wo = bg.Wo;
  for (int64_t oh = 0; oh < bg.Ho; ++oh) {
    if constexpr (KC == 0) {
      for (int64_t ow = 0; ow < Wo; ++ow) {
        block_outputs_any<S>(Xi, w16, bias, Yi, static_cast<int>(bg.K), Wp, Wo, oh, ow);
      }
    } else {
      int64_t ow = 0;
      // Rows of 7 (7x7, 14x14 planes) split evenly; others take 8s and a tail.
      const int64_t step = (Wo % 8 != 0 && Wo % 7 == 0) ? 7 : 8;
      for (; ow + step <= Wo; ow += step) {
        if (step == 8) {
          block_outputs<KC, S, 8>(Xi, w16, bias, Yi, Wp, Wo, oh, ow);
        } else {
          block_outputs<KC, S, 7>(Xi, w16, bias, Yi, Wp, Wo, oh, ow);
        }
      }
      switch (Wo - ow) {
        case 7: block_outputs<KC, S, 7>(Xi, w16, bias, Yi, Wp, Wo, oh, ow); break;
        case 6: block_outputs<KC, S, 6>(Xi, w16, bias, Yi, Wp, Wo, oh, ow); break;
        case 5: block_outputs<KC, S, 5>(Xi, w16, bias, Yi, Wp, Wo, oh, ow); break;
        case 4: block_outputs<KC, S, 4>(Xi, w16, bias, Yi, Wp, Wo, oh, ow); break;
        case 3: block_outputs<KC, S, 3>(Xi, w16, bias, Yi, Wp, Wo, oh, ow); break;
        case 2: block_outputs<KC, S, 2>(Xi, w16, bias, Yi, Wp, Wo, oh, ow); break;
        case 1: block_outputs<KC, S, 1>(Xi, w16, bias, Yi, Wp, Wo, oh, ow); break;
        default: break;
      }
    }
  }
}

// The convolution of one block in Xi -> Yi (fp32 only, so it is compiled
// once per ISA rather than once per input dtype).
SHIFTNAS_CLONES void block_conv_kernel(const float* Xi, const float* w16, const float* bias16,
                                       float* Yi, const BlockGeometry& bg) {
  const vf bias = vload(bias16);
#define SHIFTNAS_BLOCK_CONV_K(S)                                 \
  switch (bg.K) {                                                \
    case 3: block_conv<3, S>(Xi, w16, bias, Yi, bg); break;      \
    case 5: block_conv<5, S>(Xi, w16, bias, Yi, bg); break;      \
    case 7: block_conv<7, S>(Xi, w16, bias, Yi, bg); break;      \
    default: block_conv<0, S>(Xi, w16, bias, Yi, bg); break;     \
  }
  if (bg.S == 1) {
    SHIFTNAS_BLOCK_CONV_K(1)
  } else {
    SHIFTNAS_BLOCK_CONV_K(2)
  }
#undef SHIFTNAS_BLOCK_CONV_K
}

// nc consecutive planes of `HW` elements each (channels c0 .. c0+nc of one
// image) -> position-major block: plane position q goes to Xi + pos[q] * 16.
// x_end bounds the reads.
template <typename T>
SHIFTNAS_INLINE void block_load(const T* SHIFTNAS_RESTRICT x, const T* x_end, int64_t nc,
                                int64_t HW, const int32_t* SHIFTNAS_RESTRICT pos,
                                float* SHIFTNAS_RESTRICT Xi) {
  for (int64_t q0 = 0; q0 < HW; q0 += kCB) {
    vf r[kCB];
    for (int64_t l = 0; l < kCB; ++l) {
      const T* src = x + l * HW + q0;
      if (l >= nc) {
        r[l] = vf{};
      } else if (src + kCB <= x_end) {
        r[l] = load_widen<T, float>(src);
      } else {
        float tmp[kCB] = {};
        for (int64_t k = 0; src + k < x_end && k < kCB; ++k) tmp[k] = static_cast<float>(src[k]);
        r[l] = vload(tmp);
      }
    }
    transpose16(r);
    const int64_t n = std::min<int64_t>(kCB, HW - q0);
    for (int64_t p = 0; p < n; ++p) vstore(Xi + pos[q0 + p] * kCB, r[p]);
  }
}

// Position-major block Yi ([HWo][16]) -> nc consecutive planes of HWo elements.
template <typename T>
SHIFTNAS_INLINE void block_store(const float* SHIFTNAS_RESTRICT Yi, T* SHIFTNAS_RESTRICT y,
                                 int64_t nc, int64_t HWo) {
  for (int64_t q0 = 0; q0 < HWo; q0 += kCB) {
    vf r[kCB];
    for (int64_t p = 0; p < kCB; ++p) r[p] = vload(Yi + (q0 + p) * kCB);
    transpose16(r);
    const int64_t n = std::min<int64_t>(kCB, HWo - q0);
    for (int64_t l = 0; l < nc; ++l) {
      T* dst = y + l * HWo + q0;
      if (n == kCB) {
        store_narrow<T, float>(dst, r[l]);
      } else {  // the plane's end: the next plane is another channel's
        float tmp[kCB];
        vstore(tmp, r[l]);
        for (int64_t k = 0; k < n; ++k) dst[k] = static_cast<T>(tmp[k]);
      }
    }
  }
}

#define SHIFTNAS_DEFINE_BLOCK_MOVES(T)                                                        \
  SHIFTNAS_CLONES void block_load_kernel(const T* x, const T* x_end, int64_t nc, int64_t HW,  \
                                         const int32_t* pos, float* Xi) {                     \
    block_load<T>(x, x_end, nc, HW, pos, Xi);                                                 \
  }                                                                                           \
  SHIFTNAS_CLONES void block_store_kernel(const float* Yi, T* y, int64_t nc, int64_t HWo) {   \
    block_store<T>(Yi, y, nc, HWo);                                                           \
  }

SHIFTNAS_DEFINE_BLOCK_MOVES(float)
SHIFTNAS_DEFINE_BLOCK_MOVES(c10::BFloat16)
SHIFTNAS_DEFINE_BLOCK_MOVES(c10::Half)
#undef SHIFTNAS_DEFINE_BLOCK_MOVES

// Aligned view into a float vector (the block buffers are read as whole
// 64-byte vectors: aligned, none splits a cache line).
float* align64(std::vector<float>& v) {
  const auto addr = reinterpret_cast<std::uintptr_t>(v.data());
  return v.data() + ((64 - addr % 64) % 64) / sizeof(float);
}

// Brings [p, p + bytes) into L2 (prefetcht1 / prefetchw).
SHIFTNAS_INLINE void prefetch_range(const void* p, int64_t bytes, bool for_write) {
  const char* c = static_cast<const char*>(p);
  for (int64_t off = 0; off < bytes; off += 64) {
    if (for_write) {
      __builtin_prefetch(c + off, 1, 2);
    } else {
      __builtin_prefetch(c + off, 0, 2);
    }
  }
}

// Channel-blocked forward over all (image, block of 16 channels) units.
template <typename T>
void forward_blocked(const T* xp, const T* x_end, const float* wp, const float* bp, T* yp,
                     int64_t B, int64_t C, const Geometry& g) {
  const BlockGeometry bg = make_block_geometry(g);
  const int64_t K = g.K, KK = K * K, HW = g.H * g.W, HWo = g.Ho * g.Wo;
  const int64_t blocks = (C + kCB - 1) / kCB;
  // Per block: weights as [k*k][16] and bias as [16], zero past C.
  std::vector<float> w16(blocks * KK * kCB + kCB, 0.0f), b16(blocks * kCB + kCB, 0.0f);
  for (int64_t c = 0; c < C; ++c) {
    for (int64_t t = 0; t < KK; ++t) w16[((c / kCB) * KK + t) * kCB + c % kCB] = wp[c * KK + t];
    if (bp) b16[c] = bp[c];
  }
  // Padded position of each input position.
  std::vector<int32_t> pos(HW);
  for (int64_t q = 0; q < HW; ++q) {
    pos[q] = static_cast<int32_t>((q / g.W + g.P) * bg.Wp + q % g.W + g.P);
  }
  const int64_t grain = grain_for(HWo * KK * kCB);
  at::parallel_for(0, B * blocks, grain, [&](int64_t u0, int64_t u1) {
    // Zero-initialised: the padding of Xi (only interior positions are rewritten).
    std::vector<float> scratch(bg.xi_len + bg.yi_len + 16, 0.0f);
    float* Xi = align64(scratch);
    float* Yi = Xi + bg.xi_len;
    for (int64_t u = u0; u < u1; ++u) {
      const int64_t b = u / blocks, blk = u % blocks;
      const int64_t c0 = blk * kCB, nc = std::min(kCB, C - c0);
      block_load_kernel(xp + (b * C + c0) * HW, x_end, nc, HW, pos.data(), Xi);
      block_conv_kernel(Xi, w16.data() + blk * KK * kCB, b16.data() + blk * kCB, Yi, bg);
      block_store_kernel(Yi, yp + (b * C + c0) * HWo, nc, HWo);
    }
  });
}

// Flat-grid forward over all (b, c) planes (float64).
void forward_flat(const double* xp, const double* x_end, const double* wp, const double* bp,
                  double* yp, int64_t B, int64_t C, const Geometry& g) {
  const int64_t HW = g.H * g.W, HWo = g.Ho * g.Wo, KK = g.K * g.K;
  at::parallel_for(0, B * C, grain_for(HWo * KK), [&](int64_t p0, int64_t p1) {
    // Zero-initialised: the padding of the phase planes.
    std::vector<double> scratch(g.S * g.S * g.phase_len + g.out_len);
    double* X = scratch.data();
    double* out = X + g.S * g.S * g.phase_len;
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t c = p % C;
      load_plane(xp + p * HW, x_end, X, g);
      forward_plane_kernel(X, wp + c * KK, bp ? bp[c] : 0.0, out, g);
      store_output(out, yp + p * HWo, g);
    }
  });
}

// fp32-accumulating dtypes run the channel-blocked kernel, float64 (which only
// serves gradcheck) the flat one.
template <typename T, typename acc_t>
void forward_any(const T* xp, const T* x_end, const acc_t* wp, const acc_t* bp, T* yp, int64_t B,
                 int64_t C, const Geometry& g) {
  if constexpr (std::is_same_v<acc_t, float>) {
    forward_blocked<T>(xp, x_end, wp, bp, yp, B, C, g);
  } else {
    forward_flat(xp, x_end, wp, bp, yp, B, C, g);
  }
}

// Flat-grid backward: parallel over channels, each thread loops over the
// batch (deterministic per-channel sums, see the file notes). dw / db
// receive the per-channel sums.
template <typename T, typename acc_t>
void backward_flat(const T* xp, const T* gyp, T* gxp, const acc_t* wp, int64_t B, int64_t C,
                   const Geometry& g, bool need_x, bool need_w, bool need_b, acc_t* dw,
                   acc_t* db, const T* x_end, const T* gy_end) {
  using scalar_t = T;
  const int64_t H = g.H, W = g.W, KK = g.K * g.K;
  const int64_t grain = grain_for(B * g.Ho * g.Wo * KK * 2);
  const int64_t phases_len = g.S * g.S * g.phase_len;
  at::parallel_for(0, C, grain, [&](int64_t c0, int64_t c1) {
    // Zero-initialised: the padding of X and the dropped columns / margin of G.
    constexpr int64_t V = kLanes<acc_t>;
    const int64_t row_len = round_up(W, 2 * V);
    std::vector<acc_t> scratch((need_w ? phases_len : 0) + g.gy_len +
                               (need_x ? phases_len + row_len : 0) + (KK + 1) * V);
    acc_t* X = scratch.data();
    acc_t* G = X + (need_w ? phases_len : 0) + g.margin;  // flat grid after the margin
    acc_t* GX = X + (need_w ? phases_len : 0) + g.gy_len;
    acc_t* row_tmp = GX + (need_x ? phases_len : 0);
    acc_t* dwv = row_tmp + (need_x ? row_len : 0);  // k*k partial-sum vectors
    acc_t* dbv = dwv + KK * V;                       // one more for the bias
    for (int64_t c = c0; c < c1; ++c) {
      std::fill(dwv, dwv + (KK + 1) * V, acc_t(0));
      for (int64_t bi = 0; bi < B; ++bi) {
        const int64_t p = bi * C + c;
        if (bi + 1 < B) {
          // Consecutive planes of one channel are C planes apart, too far
          // for the hardware prefetchers: fetching the next ones early took
          // the 7x7 k=3 C=192 B=64 backward from 1.13 to 0.87-1.0 ms and
          // 14x14 C=96 from 1.21 to 1.05 (2 threads); large planes: same.
          const int64_t q = p + C;
          prefetch_range(gyp + q * g.Ho * g.Wo, g.Ho * g.Wo * sizeof(scalar_t), false);
          if (need_w) prefetch_range(xp + q * H * W, H * W * sizeof(scalar_t), false);
          if (need_x) prefetch_range(gxp + q * H * W, H * W * sizeof(scalar_t), true);
        }
        load_grad_y(gyp + p * g.Ho * g.Wo, gy_end, G, g);
        if (need_w) {
          load_plane(xp + p * H * W, x_end, X, g);
          grad_w_plane_kernel(X, G, dwv, g);
        }
        if (need_b) flat_sum_kernel(G, g.nvec, dbv);
        if (need_x) {
          grad_x_plane_kernel(G, wp + c * KK, GX, g);
          store_plane(GX, gxp + p * H * W, row_tmp, g);
        }
      }
      if (need_w) reduce_partials_kernel(dwv, KK, dw + c * KK);
      if (need_b) reduce_partials_kernel(dbv, 1, db + c);
    }
  });
}

// ---------------------------------------------------------------------------
// Channel-blocked backward (fp32 accumulation). Against the flat kernels it
// measured equal (56x56 and 112x112 planes with stride 2) to 2x faster (7x7
// and 14x14 with k=3, where the flat kernels' per-row copies dominate and
// left forward+backward at ~1.05-1.2x the reference). Planes above
// kBlockedBackwardMaxPlane keep the flat kernels: the three block buffers
// grow to ~5 MB per thread at 160x160.
//
// Same 16-channel blocks as the forward. grad_y goes into a zero-filled
// scatter grid Gd at rows/columns M + S*o (M = k-1; with stride 2 the odd
// rows/columns stay zero). Then
//   grad_x[h][w] = sum_{i,j} w[k-1-i][k-1-j] * Gd[h + P + i][w + P + j]
// is the forward block kernel with the flipped weight at stride 1 (with
// stride 2, three quarters of its FMAs hit zeros; cheap next to the copies
// it replaces), and
//   grad_w[i][j] = sum_{oh,ow} Gd[M + S*oh][M + S*ow] * Xi[S*oh + i][S*ow + j]
// runs per kernel row, that row's k accumulators in registers and each input
// vector loaded once per output block. Units are (channel block, batch chunk)
// with a fixed number of chunks; each owns partial grad_w / grad_b sums that
// are added over the chunks in order: deterministic for any thread count.

constexpr int64_t kBlockedBackwardMaxPlane = 160 * 160;
constexpr int64_t kBatchChunks = 4;

struct BackwardBlockGeometry {
  BlockGeometry fwd;      // the forward's x block (padded) and output sizes
  BlockGeometry gx;       // grad_x as a forward: Ho = H, Wo = W, Wp = Wg, S = 1
  int64_t M, Hg, Wg;      // scatter grid: margin and size
  int64_t g_len, gx_len;  // floats of Gd and of the [H*W][16] grad_x block
};

BackwardBlockGeometry make_backward_geometry(const Geometry& g) {
  BackwardBlockGeometry bb{};
  bb.fwd = make_block_geometry(g);
  bb.M = g.K - 1;
  bb.Hg = std::max(g.H + g.P + g.K, bb.M + g.S * (g.Ho - 1) + 1);
  bb.Wg = std::max(g.W + g.P + g.K, bb.M + g.S * (g.Wo - 1) + 1);
  bb.g_len = bb.Hg * bb.Wg * kCB;
  bb.gx_len = round_up(g.H * g.W, kCB) * kCB;
  bb.gx = bb.fwd;
  bb.gx.S = 1;
  bb.gx.Ho = g.H;
  bb.gx.Wo = g.W;
  bb.gx.Wp = bb.Wg;
  return bb;
}

// acc[j] += sum over R outputs (oh, ow + r) of grad_y * x at tap (i, j).
template <int KC, int S, int R>
SHIFTNAS_INLINE void gradw_block(const float* SHIFTNAS_RESTRICT Xi, const float* SHIFTNAS_RESTRICT Gd,
                                 vf (&acc)[KC], int i, int64_t Wp, int64_t Wg, int64_t M,
                                 int64_t oh, int64_t ow) {
  const float* grow = Gd + ((M + S * oh) * Wg + M + S * ow) * kCB;
  vf gv[R];
  for (int r = 0; r < R; ++r) gv[r] = vload(grow + r * S * kCB);
  const float* row = Xi + ((oh * S + i) * Wp + ow * S) * kCB;
#pragma GCC unroll 32
  for (int t = 0; t < (R - 1) * S + KC; ++t) {
    const vf v = vload(row + t * kCB);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const int j = t - r * S;
      if (j >= 0 && j < KC) acc[j] += gv[r] * v;
    }
  }
}

template <int KC, int S>
SHIFTNAS_INLINE void gradw_rows(const float* SHIFTNAS_RESTRICT Xi, const float* SHIFTNAS_RESTRICT Gd,
                                float* SHIFTNAS_RESTRICT dW16, const BackwardBlockGeometry& bb) {
  const int64_t Wp = bb.fwd.Wp, Wg = bb.Wg, M = bb.M, Ho = bb.fwd.Ho, Wo = bb.fwd.Wo;
  const int64_t step = (Wo % 8 != 0 && Wo % 7 == 0) ? 7 : 8;
  for (int i = 0; i < KC; ++i) {
    vf acc[KC];
    for (int j = 0; j < KC; ++j) acc[j] = vf{};
    for (int64_t oh = 0; oh < Ho; ++oh) {
      int64_t ow = 0;
      for (; ow + step <= Wo; ow += step) {
        if (step == 8) {
          gradw_block<KC, S, 8>(Xi, Gd, acc, i, Wp, Wg, M, oh, ow);
        } else {
          gradw_block<KC, S, 7>(Xi, Gd, acc, i, Wp, Wg, M, oh, ow);
        }
      }
      switch (Wo - ow) {
        case 7: gradw_block<KC, S, 7>(Xi, Gd, acc, i, Wp, Wg, M, oh, ow); break;
        case 6: gradw_block<KC, S, 6>(Xi, Gd, acc, i, Wp, Wg, M, oh, ow); break;
        case 5: gradw_block<KC, S, 5>(Xi, Gd, acc, i, Wp, Wg, M, oh, ow); break;
        case 4: gradw_block<KC, S, 4>(Xi, Gd, acc, i, Wp, Wg, M, oh, ow); break;
        case 3: gradw_block<KC, S, 3>(Xi, Gd, acc, i, Wp, Wg, M, oh, ow); break;
        case 2: gradw_block<KC, S, 2>(Xi, Gd, acc, i, Wp, Wg, M, oh, ow); break;
        case 1: gradw_block<KC, S, 1>(Xi, Gd, acc, i, Wp, Wg, M, oh, ow); break;
        default: break;
      }
    }
    for (int j = 0; j < KC; ++j) {
      float* d = dW16 + (i * KC + j) * kCB;
      vstore(d, vload(d) + acc[j]);
    }
  }
}

// Any kernel size: one tap at a time.
template <int S>
SHIFTNAS_INLINE void gradw_any(const float* SHIFTNAS_RESTRICT Xi, const float* SHIFTNAS_RESTRICT Gd,
                               float* SHIFTNAS_RESTRICT dW16, const BackwardBlockGeometry& bb) {
  const int64_t K = bb.fwd.K, Wp = bb.fwd.Wp, Wg = bb.Wg, M = bb.M;
  for (int64_t t = 0; t < K * K; ++t) {
    const int64_t i = t / K, j = t % K;
    vf acc = {};
    for (int64_t oh = 0; oh < bb.fwd.Ho; ++oh) {
      for (int64_t ow = 0; ow < bb.fwd.Wo; ++ow) {
        acc += vload(Gd + ((M + S * oh) * Wg + M + S * ow) * kCB) *
               vload(Xi + ((oh * S + i) * Wp + ow * S + j) * kCB);
      }
    }
    vstore(dW16 + t * kCB, vload(dW16 + t * kCB) + acc);
  }
}

template <int S>
SHIFTNAS_INLINE void gradb_sum(const float* SHIFTNAS_RESTRICT Gd, float* SHIFTNAS_RESTRICT db16,
                               const BackwardBlockGeometry& bb) {
  vf a0 = {}, a1 = {};
  for (int64_t oh = 0; oh < bb.fwd.Ho; ++oh) {
    const float* row = Gd + ((bb.M + S * oh) * bb.Wg + bb.M) * kCB;
    int64_t ow = 0;
    for (; ow + 2 <= bb.fwd.Wo; ow += 2) {
      a0 += vload(row + ow * S * kCB);
      a1 += vload(row + (ow + 1) * S * kCB);
    }
    if (ow < bb.fwd.Wo) a0 += vload(row + ow * S * kCB);
  }
  vstore(db16, vload(db16) + (a0 + a1));
}

template <int S>
SHIFTNAS_INLINE void block_backward_impl(const float* Xi, const float* Gd, const float* wf16,
                                         float* GXi, float* dW16, float* db16, bool need_x,
                                         bool need_w, bool need_b,
                                         const BackwardBlockGeometry& bb) {
  if (need_w) {
    switch (bb.fwd.K) {
      case 3: gradw_rows<3, S>(Xi, Gd, dW16, bb); break;
      case 5: gradw_rows<5, S>(Xi, Gd, dW16, bb); break;
      case 7: gradw_rows<7, S>(Xi, Gd, dW16, bb); break;
      default: gradw_any<S>(Xi, Gd, dW16, bb); break;
    }
  }
  if (need_b) gradb_sum<S>(Gd, db16, bb);
  if (need_x) {
    const vf zero = {};
    const float* G0 = Gd + (bb.fwd.P * bb.Wg + bb.fwd.P) * kCB;
    switch (bb.fwd.K) {
      case 3: block_conv<3, 1>(G0, wf16, zero, GXi, bb.gx); break;
      case 5: block_conv<5, 1>(G0, wf16, zero, GXi, bb.gx); break;
      case 7: block_conv<7, 1>(G0, wf16, zero, GXi, bb.gx); break;
      default: block_conv<0, 1>(G0, wf16, zero, GXi, bb.gx); break;
    }
  }
}

SHIFTNAS_CLONES void block_backward_kernel(const float* Xi, const float* Gd, const float* wf16,
                                           float* GXi, float* dW16, float* db16, bool need_x,
                                           bool need_w, bool need_b,
                                           const BackwardBlockGeometry& bb) {
  if (bb.fwd.S == 1) {
    block_backward_impl<1>(Xi, Gd, wf16, GXi, dW16, db16, need_x, need_w, need_b, bb);
  } else {
    block_backward_impl<2>(Xi, Gd, wf16, GXi, dW16, db16, need_x, need_w, need_b, bb);
  }
}

// dw [C * k*k] and db [C] receive the per-channel sums.
template <typename T>
void backward_blocked(const T* xp, const T* gyp, T* gxp, const float* wp, int64_t B, int64_t C,
                      const Geometry& g, bool need_x, bool need_w, bool need_b, float* dw,
                      float* db, const T* x_end, const T* gy_end) {
  const BackwardBlockGeometry bb = make_backward_geometry(g);
  const int64_t KK = g.K * g.K, HW = g.H * g.W, HWo = g.Ho * g.Wo;
  const int64_t blocks = (C + kCB - 1) / kCB;
  const int64_t per_chunk = (B + kBatchChunks - 1) / kBatchChunks;
  const int64_t chunks = std::max<int64_t>(1, (B + per_chunk - 1) / std::max<int64_t>(per_chunk, 1));
  // Flipped weights (tap t -> k*k-1-t) per block as [k*k][16], zero past C.
  std::vector<float> wf16(blocks * KK * kCB, 0.0f);
  for (int64_t c = 0; c < C; ++c) {
    for (int64_t t = 0; t < KK; ++t) {
      wf16[((c / kCB) * KK + (KK - 1 - t)) * kCB + c % kCB] = wp[c * KK + t];
    }
  }
  std::vector<int32_t> pos(HW), gpos(HWo);
  for (int64_t q = 0; q < HW; ++q) {
    pos[q] = static_cast<int32_t>((q / g.W + g.P) * bb.fwd.Wp + q % g.W + g.P);
  }
  for (int64_t q = 0; q < HWo; ++q) {
    gpos[q] = static_cast<int32_t>((bb.M + g.S * (q / g.Wo)) * bb.Wg + bb.M + g.S * (q % g.Wo));
  }
  const int64_t part_len = (KK + 1) * kCB;
  std::vector<float> partial(blocks * chunks * part_len, 0.0f);
  at::parallel_for(0, blocks * chunks, 1, [&](int64_t u0, int64_t u1) {
    // Zero-initialised: the padding of Xi and the empty positions of Gd.
    std::vector<float> scratch((need_w ? bb.fwd.xi_len : 0) + bb.g_len +
                                   (need_x ? bb.gx_len : 0) + 16,
                               0.0f);
    float* Xi = align64(scratch);
    float* Gd = Xi + (need_w ? bb.fwd.xi_len : 0);
    float* GXi = Gd + bb.g_len;
    for (int64_t u = u0; u < u1; ++u) {
      const int64_t blk = u / chunks, ch = u % chunks;
      const int64_t c0 = blk * kCB, nc = std::min(kCB, C - c0);
      float* dW16 = partial.data() + u * part_len;
      float* db16 = dW16 + KK * kCB;
      for (int64_t b = ch * per_chunk; b < std::min(B, (ch + 1) * per_chunk); ++b) {
        const int64_t plane = b * C + c0;
        block_load_kernel(gyp + plane * HWo, gy_end, nc, HWo, gpos.data(), Gd);
        if (need_w) block_load_kernel(xp + plane * HW, x_end, nc, HW, pos.data(), Xi);
        block_backward_kernel(Xi, Gd, wf16.data() + blk * KK * kCB, GXi, dW16, db16, need_x,
                              need_w, need_b, bb);
        if (need_x) block_store_kernel(GXi, gxp + plane * HW, nc, HW);
      }
    }
  });
  // Sum the chunks' partials in order.
  for (int64_t c = 0; c < C; ++c) {
    const int64_t blk = c / kCB, lane = c % kCB;
    for (int64_t t = 0; t <= KK; ++t) {
      float sum = 0.0f;
      for (int64_t ch = 0; ch < chunks; ++ch) {
        sum += partial[(blk * chunks + ch) * part_len + t * kCB + lane];
      }
      if (t < KK) {
        if (need_w) dw[c * KK + t] = sum;
      } else if (need_b) {
        db[c] = sum;
      }
    }
  }
}

// fp32-accumulating dtypes on small planes run the channel-blocked kernels.
template <typename T, typename acc_t>
void backward_any(const T* xp, const T* gyp, T* gxp, const acc_t* wp, int64_t B, int64_t C,
                  const Geometry& g, bool need_x, bool need_w, bool need_b, acc_t* dw, acc_t* db,
                  const T* x_end, const T* gy_end) {
  if constexpr (std::is_same_v<acc_t, float>) {
    if (g.H * g.W <= kBlockedBackwardMaxPlane) {
      backward_blocked<T>(xp, gyp, gxp, wp, B, C, g, need_x, need_w, need_b, dw, db, x_end,
                          gy_end);
      return;
    }
  }
  backward_flat<T, acc_t>(xp, gyp, gxp, wp, B, C, g, need_x, need_w, need_b, dw, db, x_end,
                          gy_end);
}

}  // namespace

at::Tensor elastic_dwconv_forward_cpu(const at::Tensor& x, const at::Tensor& weight,
                                      const at::Tensor& bias, int64_t stride, int64_t padding) {
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t K = weight.size(2);
  const auto acc = acc_dtype(x.scalar_type());
  const Geometry g = make_geometry(H, W, K, stride, padding, lanes_for(acc));
  at::Tensor y = at::empty({B, C, g.Ho, g.Wo}, x.options());
  if (y.numel() == 0) return y;
  // weight[:C] as [C, k*k]: a view of the caller's buffer for float32/float64
  // (a contiguous prefix), a C*k*k cast otherwise.
  const at::Tensor w = weight.narrow(0, 0, C).reshape({C, K * K}).to(acc).contiguous();
  const at::Tensor b =
      bias.defined() ? bias.narrow(0, 0, C).to(acc).contiguous() : at::Tensor();

  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kBFloat16, at::kHalf, x.scalar_type(), "elastic_dwconv_forward_cpu", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        const scalar_t* xp = x.const_data_ptr<scalar_t>();
        const acc_t* wp = w.const_data_ptr<acc_t>();
        const acc_t* bp = b.defined() ? b.const_data_ptr<acc_t>() : nullptr;
        scalar_t* yp = y.mutable_data_ptr<scalar_t>();
        forward_any<scalar_t>(xp, xp + x.numel(), wp, bp, yp, B, C, g);
      });
  return y;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> elastic_dwconv_backward_cpu(
    const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& weight, int64_t stride,
    int64_t padding, int64_t bias_size, std::array<bool, 3> output_mask) {
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t Cmax = weight.size(0), K = weight.size(2), KK = K * K;
  const bool need_x = output_mask[0], need_w = output_mask[1], need_b = output_mask[2];
  const auto acc = acc_dtype(x.scalar_type());
  const Geometry g = make_geometry(H, W, K, stride, padding, lanes_for(acc));
  at::Tensor grad_x = need_x ? at::empty({B, C, H, W}, x.options()) : at::Tensor();
  at::Tensor grad_w = need_w ? at::empty({Cmax, 1, K, K}, weight.options()) : at::Tensor();
  at::Tensor grad_b = need_b ? at::empty({bias_size}, weight.options()) : at::Tensor();
  if (!(need_x || need_w || need_b)) return {grad_x, grad_w, grad_b};
  const at::Tensor w = weight.narrow(0, 0, C).reshape({C, KK}).to(acc).contiguous();

  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kBFloat16, at::kHalf, x.scalar_type(), "elastic_dwconv_backward_cpu", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        const scalar_t* xp = x.const_data_ptr<scalar_t>();
        const scalar_t* gyp = grad_y.const_data_ptr<scalar_t>();
        const acc_t* wp = w.const_data_ptr<acc_t>();
        scalar_t* gxp = need_x ? grad_x.mutable_data_ptr<scalar_t>() : nullptr;
        const scalar_t* x_end = xp + x.numel();
        const scalar_t* gy_end = gyp + grad_y.numel();
        // Per-channel sums.
        std::vector<acc_t> dw(need_w ? C * KK : 0, acc_t(0));
        std::vector<acc_t> db(need_b ? C : 0, acc_t(0));

        backward_any<scalar_t, acc_t>(xp, gyp, gxp, wp, B, C, g, need_x, need_w, need_b,
                                      dw.data(), db.data(), x_end, gy_end);

        // Full-size gradients, zero past the active channels.
        if (need_w) {
          scalar_t* gwp = grad_w.mutable_data_ptr<scalar_t>();
          for (int64_t i = 0; i < C * KK; ++i) gwp[i] = static_cast<scalar_t>(dw[i]);
          std::fill(gwp + C * KK, gwp + Cmax * KK, static_cast<scalar_t>(0));
        }
        if (need_b) {
          scalar_t* gbp = grad_b.mutable_data_ptr<scalar_t>();
          for (int64_t c = 0; c < C; ++c) gbp[c] = static_cast<scalar_t>(db[c]);
          std::fill(gbp + C, gbp + bias_size, static_cast<scalar_t>(0));
        }
      });
  return {grad_x, grad_w, grad_b};
}

}  // namespace shiftnas
