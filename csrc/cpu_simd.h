// Small SIMD toolkit of the CPU kernels of elastic_dwconv.cpp and
// elastic_layer_norm.cpp (internal; not part of the extension's interface).
//
//  * simd_t<acc_t> is a 64-byte GCC/Clang vector (one AVX-512 register, two
//    AVX2 or four SSE registers): the compiler lowers it to whatever the
//    enclosing function's target offers.
//  * SHIFTNAS_CLONES compiles a leaf kernel for x86-64-v4 / v3 / baseline and
//    picks one at load time (GCC function multi-versioning), so one portable
//    build still runs AVX-512 code where available. Only leaf kernels that
//    touch no ATen code get the attribute: nothing compiled with wider ISA
//    flags can leak into shared inline functions.
#pragma once

#include <c10/util/BFloat16.h>

#include <cstdint>
#include <cstring>

#if !defined(__GNUC__) && !defined(__clang__)
#error "shiftnas/csrc/cpu_simd.h needs GCC or Clang (vector extensions)"
#endif

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && \
    defined(__linux__) && !defined(SHIFTNAS_NO_MULTIVERSION)
#define SHIFTNAS_CLONES \
  __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define SHIFTNAS_CLONES
#endif

#define SHIFTNAS_INLINE inline __attribute__((always_inline))
#define SHIFTNAS_RESTRICT __restrict__

// The helpers pass 64-byte vectors by value; they are internal and always
// inlined, so GCC's "ABI changes without AVX-512" note does not apply.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wpsabi"
#endif

namespace shiftnas {
namespace simd {

template <typename acc_t>
struct Simd;
template <>
struct Simd<float> {
  typedef float type __attribute__((vector_size(64)));
};
template <>
struct Simd<double> {
  typedef double type __attribute__((vector_size(64)));
};
template <typename acc_t>
using simd_t = typename Simd<acc_t>::type;
template <typename acc_t>
constexpr int64_t kLanes = static_cast<int64_t>(64 / sizeof(acc_t));

template <typename acc_t>
SHIFTNAS_INLINE simd_t<acc_t> vload(const acc_t* p) {
  simd_t<acc_t> v;
  std::memcpy(&v, p, sizeof(v));  // unaligned load
  return v;
}

template <typename acc_t>
SHIFTNAS_INLINE void vstore(acc_t* p, simd_t<acc_t> v) {
  std::memcpy(p, &v, sizeof(v));
}

template <typename acc_t>
SHIFTNAS_INLINE simd_t<acc_t> vsplat(acc_t s) {
  return simd_t<acc_t>{} + s;
}

template <int W, typename acc_t>
SHIFTNAS_INLINE void tree_fold(acc_t* s) {
  if constexpr (W >= 1) {
    for (int j = 0; j < W; ++j) s[j] += s[j + W];
    tree_fold<W / 2>(s);
  }
}

// Horizontal sum in log2(lanes) steps rather than a lanes-long serial chain.
template <typename acc_t>
SHIFTNAS_INLINE acc_t hsum(simd_t<acc_t> v) {
  acc_t s[kLanes<acc_t>];
  std::memcpy(s, &v, sizeof(v));
  tree_fold<static_cast<int>(kLanes<acc_t> / 2)>(s);
  return s[0];
}

// bfloat16 <-> fp32 on 16 lanes. c10::BFloat16's scalar conversions
// (round-to-nearest-even with a NaN check per element) left the bf16 paths
// 2-4x slower than PyTorch's; these produce the same bits, vectorised.
typedef uint16_t u16x16_t __attribute__((vector_size(32)));
typedef uint16_t u16x32_t __attribute__((vector_size(64)));
typedef uint32_t u32x16_t __attribute__((vector_size(64)));

// bf16 bits into the high halves of 32-bit lanes: one two-source word
// permute with zeros (GCC split the zero-extend + shift into five ops, and
// building the 64-byte operand through memory stalled store forwarding).
SHIFTNAS_INLINE simd_t<float> load_bf16(const c10::BFloat16* p) {
  u16x16_t h;
  std::memcpy(&h, p, sizeof(h));
#if defined(__has_builtin) && __has_builtin(__builtin_shufflevector)
  const u16x32_t w = __builtin_shufflevector(h, u16x16_t{}, 16, 0, 16, 1, 16, 2, 16, 3, 16, 4,
                                             16, 5, 16, 6, 16, 7, 16, 8, 16, 9, 16, 10, 16, 11,
                                             16, 12, 16, 13, 16, 14, 16, 15);
#else
  const u32x16_t w = __builtin_convertvector(h, u32x16_t) << 16;
#endif
  simd_t<float> v;
  std::memcpy(&v, &w, sizeof(v));
  return v;
}

SHIFTNAS_INLINE void store_bf16(c10::BFloat16* p, simd_t<float> v) {
  u32x16_t u;
  std::memcpy(&u, &v, sizeof(u));
  u32x16_t r = (u + (((u >> 16) & 1u) + 0x7FFFu)) >> 16;  // c10::round_to_nearest_even
  r = (v != v) ? (u32x16_t{} + 0x7FC0u) : r;               // NaN -> canonical quiet NaN
  const u16x16_t h = __builtin_convertvector(r, u16x16_t);
  std::memcpy(p, &h, sizeof(h));
}

}  // namespace simd
}  // namespace shiftnas
