// CPU mask dot (see mask_dot.h).
//
// Design notes (the "why"):
//  * The reference, (y * dy).sum(dims but dim), writes a [y]-sized product
//    (bf16 under autocast) and then reduces it over strided dims; on the CNN
//    supernet's taps (NCHW, dim 1) that was ~7 ms of a ~110 ms bf16 training
//    step on one core. Here y and dy are read once, in memory order.
//  * Two loop shapes:
//    - short rows (inner < kRowMin: [B, C] and [B, N, E] with the last dim,
//      NCHW at CNN sizes up to H*W = 196): in every outer slice a block of
//      channels is one contiguous run of L = channels * inner elements; the
//      products are accumulated element-wise into an fp32 scratch of L
//      (<= 32 KB) across the outer index, then each channel's `inner`
//      entries are summed once. All-vector code whatever `inner` is (a
//      per-row dot of 9 or 16 elements would be mostly ragged tail).
//    - long rows (inner >= kRowMin): per channel, each outer slice's row is a
//      dot product with four vector accumulators.
//  * fp32 accumulation in two levels (partial sums over chunks of outer
//    slices), so the rounding error grows with ~chunk + outer / chunk terms
//    rather than with outer: close to PyTorch's own cascade sum in fp32.
//  * Parallel over channel blocks (long rows: channels); every channel is
//    reduced by one task in a fixed order, so the result does not depend on
//    the thread count.
//  * The leaf kernels are multi-versioned (SHIFTNAS_CLONES, cpu_simd.h) and
//    touch no ATen code.
#include "mask_dot.h"

#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <c10/util/BFloat16.h>

#include <algorithm>
#include <vector>

#include "cpu_simd.h"

namespace shiftnas {
namespace {

using namespace simd;  // NOLINT(build/namespaces): cpu_simd.h's small toolkit
constexpr int64_t W = simd::kLanes<float>;

constexpr int64_t kRowMin = 256;         // rows at least this long: a dot product per row
constexpr int64_t kFlat = 8192;          // fp32 scratch per channel block (32 KB)
constexpr int64_t kGrainElems = 32768;   // elements per parallel task, at least
constexpr int64_t kRowChunk = 4;         // long rows: outer slices per partial sum

// Short rows: outer slices per partial sum, about sqrt(outer) (at least 16, even).
int64_t slice_chunk(int64_t outer) {
  int64_t c = 16;
  while (c * c < outer) c += 16;
  return c;
}

SHIFTNAS_INLINE simd_t<float> load_f(const float* p) { return vload(p); }
SHIFTNAS_INLINE simd_t<float> load_f(const c10::BFloat16* p) { return simd::load_bf16(p); }

// acc[i] += sum over o in [o0, o1) of y[o*so + i] * dy[o*so + i], i < L: two outer slices per
// pass over acc.
template <typename T>
SHIFTNAS_INLINE void slices_impl(const T* SHIFTNAS_RESTRICT y, const T* SHIFTNAS_RESTRICT dy,
                                 int64_t o0, int64_t o1, int64_t so, int64_t L,
                                 float* SHIFTNAS_RESTRICT acc) {
  int64_t o = o0;
  for (; o + 2 <= o1; o += 2) {
    const T* y0 = y + o * so;
    const T* g0 = dy + o * so;
    const T* y1 = y0 + so;
    const T* g1 = g0 + so;
    int64_t i = 0;
    for (; i + W <= L; i += W) {
      vstore(acc + i, vload(acc + i) + load_f(y0 + i) * load_f(g0 + i) +
                          load_f(y1 + i) * load_f(g1 + i));
    }
    for (; i < L; ++i) {
      acc[i] += static_cast<float>(y0[i]) * static_cast<float>(g0[i]) +
                static_cast<float>(y1[i]) * static_cast<float>(g1[i]);
    }
  }
  if (o < o1) {
    const T* y0 = y + o * so;
    const T* g0 = dy + o * so;
    int64_t i = 0;
    for (; i + W <= L; i += W) vstore(acc + i, vload(acc + i) + load_f(y0 + i) * load_f(g0 + i));
    for (; i < L; ++i) acc[i] += static_cast<float>(y0[i]) * static_cast<float>(g0[i]);
  }
}

// out[c] for the channel block [0, cb) at y / dy. The outer slices are summed `chunk` at a time
// into `part`, each chunk's sum added to `acc` (a two-level sum: fp32 error grows with about
// chunk + outer / chunk terms, not outer), then each channel's `inner` entries summed.
template <typename T>
SHIFTNAS_INLINE void block_impl(const T* SHIFTNAS_RESTRICT y, const T* SHIFTNAS_RESTRICT dy,
                                int64_t outer, int64_t chunk, int64_t so, int64_t cb,
                                int64_t inner, float* SHIFTNAS_RESTRICT acc, float* SHIFTNAS_RESTRICT part,
                                float* SHIFTNAS_RESTRICT out) {
  const int64_t L = cb * inner;
  std::fill(acc, acc + L, 0.f);
  for (int64_t o0 = 0; o0 < outer; o0 += chunk) {
    const int64_t o1 = std::min(outer, o0 + chunk);
    if (o0 == 0) {
      slices_impl(y, dy, o0, o1, so, L, acc);
      continue;
    }
    std::fill(part, part + L, 0.f);
    slices_impl(y, dy, o0, o1, so, L, part);
    for (int64_t i = 0; i < L; ++i) acc[i] += part[i];
  }
  for (int64_t c = 0; c < cb; ++c) {
    const float* a = acc + c * inner;
    float s[4] = {0.f, 0.f, 0.f, 0.f};  // four partial sums: shorter chains, less rounding
    int64_t i = 0;
    for (; i + 4 <= inner; i += 4) {
      for (int j = 0; j < 4; ++j) s[j] += a[i + j];
    }
    for (; i < inner; ++i) s[0] += a[i];
    out[c] = (s[0] + s[1]) + (s[2] + s[3]);
  }
}

// sum_o sum_i y[o*so + i] * dy[o*so + i] over i < inner: one channel of long rows; four vector
// accumulators, folded into the total every kRowChunk outer slices (a two-level sum, as in
// block_impl).
template <typename T>
SHIFTNAS_INLINE float rows_impl(const T* SHIFTNAS_RESTRICT y, const T* SHIFTNAS_RESTRICT dy,
                                int64_t outer, int64_t so, int64_t inner) {
  simd_t<float> total{};
  float tail = 0.f;
  for (int64_t o0 = 0; o0 < outer; o0 += kRowChunk) {
    simd_t<float> a0{}, a1{}, a2{}, a3{};
    for (int64_t o = o0; o < std::min(outer, o0 + kRowChunk); ++o) {
      const T* yo = y + o * so;
      const T* go = dy + o * so;
      int64_t i = 0;
      for (; i + 4 * W <= inner; i += 4 * W) {
        a0 += load_f(yo + i) * load_f(go + i);
        a1 += load_f(yo + i + W) * load_f(go + i + W);
        a2 += load_f(yo + i + 2 * W) * load_f(go + i + 2 * W);
        a3 += load_f(yo + i + 3 * W) * load_f(go + i + 3 * W);
      }
      for (; i + W <= inner; i += W) a0 += load_f(yo + i) * load_f(go + i);
      for (; i < inner; ++i) tail += static_cast<float>(yo[i]) * static_cast<float>(go[i]);
    }
    total += (a0 + a1) + (a2 + a3);
  }
  return hsum<float>(total) + tail;
}

// Non-template, per-dtype entry points: the unit that gets multi-versioned.
#define SHIFTNAS_DEFINE_DOT_KERNELS(T)                                                    \
  SHIFTNAS_CLONES void dot_block(const T* y, const T* dy, int64_t outer, int64_t chunk,   \
                                 int64_t so, int64_t cb, int64_t inner, float* acc,       \
                                 float* out) {                                            \
    block_impl<T>(y, dy, outer, chunk, so, cb, inner, acc, acc + cb * inner, out);        \
  }                                                                                       \
  SHIFTNAS_CLONES float dot_rows(const T* y, const T* dy, int64_t outer, int64_t so,      \
                                 int64_t inner) {                                         \
    return rows_impl<T>(y, dy, outer, so, inner);                                         \
  }

SHIFTNAS_DEFINE_DOT_KERNELS(float)
SHIFTNAS_DEFINE_DOT_KERNELS(c10::BFloat16)
#undef SHIFTNAS_DEFINE_DOT_KERNELS

template <typename T>
void mask_dot_run(const T* y, const T* dy, int64_t outer, int64_t C, int64_t inner, float* out) {
  const int64_t so = C * inner;
  if (inner >= kRowMin) {
    const int64_t grain = std::max<int64_t>(1, kGrainElems / std::max<int64_t>(outer * inner, 1));
    at::parallel_for(0, C, grain, [&](int64_t c0, int64_t c1) {
      for (int64_t c = c0; c < c1; ++c) out[c] = dot_rows(y + c * inner, dy + c * inner, outer, so, inner);
    });
    return;
  }
  const int64_t cb = std::max<int64_t>(1, std::min(C, kFlat / inner));  // channels per block
  const int64_t blocks = (C + cb - 1) / cb;
  const int64_t chunk = slice_chunk(outer);
  const int64_t grain = std::max<int64_t>(1, kGrainElems / std::max<int64_t>(outer * cb * inner, 1));
  at::parallel_for(0, blocks, grain, [&](int64_t b0, int64_t b1) {
    std::vector<float> acc(2 * cb * inner);  // acc + part
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t c0 = b * cb;
      const int64_t n = std::min(cb, C - c0);
      dot_block(y + c0 * inner, dy + c0 * inner, outer, chunk, so, n, inner, acc.data(),
                out + c0);
    }
  });
}

}  // namespace

at::Tensor mask_dot_cpu(const at::Tensor& y, const at::Tensor& dy, int64_t dim) {
  const int64_t C = y.size(dim);
  int64_t outer = 1, inner = 1;
  for (int64_t d = 0; d < dim; ++d) outer *= y.size(d);
  for (int64_t d = dim + 1; d < y.dim(); ++d) inner *= y.size(d);
  at::Tensor out = at::empty({C}, y.options().dtype(at::kFloat));
  float* op = out.mutable_data_ptr<float>();
  if (outer == 0 || inner == 0) {
    std::fill(op, op + C, 0.f);
    return out;
  }
  if (y.scalar_type() == at::kBFloat16) {
    mask_dot_run(y.const_data_ptr<c10::BFloat16>(), dy.const_data_ptr<c10::BFloat16>(), outer, C,
                 inner, op);
  } else {
    mask_dot_run(y.const_data_ptr<float>(), dy.const_data_ptr<float>(), outer, C, inner, op);
  }
  return out;
}

}  // namespace shiftnas
