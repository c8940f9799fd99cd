// Shared by the native GLM kernels (glm_kernel.cc, glm_exact_kernel.cc): fixed-width vectors
// (GCC/Clang vector extensions), horizontal sums, and float32 exp / log1p written so that loops
// over them vectorise (float64 uses the C library). Each kernel file is compiled with it into
// the one library that advi_jax/models/_native/__init__.py builds.

#pragma once

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>
#include <type_traits>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

// Fully unroll the small fixed-size loops of the register blocks (keeps the accumulators in registers).
#if defined(__clang__)
#define ADVI_UNROLL _Pragma("unroll")
#else
#define ADVI_UNROLL _Pragma("GCC unroll 16")
#endif

namespace {

// Vectors of VB bytes (GCC/Clang vector extensions; lowered to AVX-512, AVX2, SSE or NEON).
template <typename T, int VB>
struct Vec {
  static constexpr int W = VB / static_cast<int>(sizeof(T));
  typedef T type __attribute__((vector_size(VB)));
};

template <typename T, int VB>
inline typename Vec<T, VB>::type load(const T* p) {
  typename Vec<T, VB>::type v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

// Horizontal sum: by halving down to 32 bytes, then an AVX shuffle (float) or a short loop.
// (Not _mm512_reduce_add_*: GCC 12's versions trip -Wmaybe-uninitialized inside its own headers.)
template <typename T, int VB>
inline T hsum(typename Vec<T, VB>::type v) {
#if defined(__AVX__)
  if constexpr (VB == 32 && std::is_same_v<T, float>) {
    const __m256 x = reinterpret_cast<__m256>(v);
    __m128 q = _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
    q = _mm_add_ps(q, _mm_movehl_ps(q, q));
    q = _mm_add_ss(q, _mm_movehdup_ps(q));
    return _mm_cvtss_f32(q);
  }
#endif
  if constexpr (VB == static_cast<int>(sizeof(T))) {
    return v[0];
  } else if constexpr (VB <= 32) {
    T sum = 0;
    for (int i = 0; i < Vec<T, VB>::W; ++i) sum += v[i];
    return sum;
  } else {
    typename Vec<T, VB / 2>::type lo, hi;
    std::memcpy(&lo, &v, sizeof lo);
    std::memcpy(&hi, reinterpret_cast<const char*>(&v) + sizeof lo, sizeof hi);
    return hsum<T, VB / 2>(lo + hi);
  }
}

// ---- float32 elementwise functions written so that loops over them vectorise ----

// exp(a), a <= 0; exact 0 below -103 (the float32 subnormal range is flushed at -87.3).
inline float exp_nonpos_f(float a) {
  const float clamped = a < -87.0f ? -87.0f : a;
  // Round to nearest by adding and subtracting 1.5 * 2^23 (no library call, so loops vectorise).
  const float k = (clamped * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  const float f = clamped - k * 0.693145751953125f - k * 1.428606765330187e-06f;
  const float p =
      1.0f + f * (1.0f + f * (0.5f + f * (0.16666667f + f * (0.041666668f + f * (0.0083333338f + f * 0.0013888889f)))));
  const int32_t bits = (static_cast<int32_t>(k) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  const float e = p * scale;
  return a < -103.0f ? 0.0f : e;
}

// exp(a) for any a: exp(a) = exp(-|a|) or its reciprocal (inf above ~88.7).
inline float exp_f(float a) {
  const float e = exp_nonpos_f(-std::fabs(a));
  return a > 0.0f ? (a > 88.72f ? INFINITY : 1.0f / e) : e;
}

// log(u) for u in [1, 2]: log m + k log 2 with m in [1/sqrt 2, sqrt 2], log m = 2 atanh(s).
inline float log_1_2_f(float u) {
  const bool big = u > 1.41421356f;
  const float m = big ? 0.5f * u : u;
  const float s = (m - 1.0f) / (m + 1.0f);
  const float s2 = s * s;
  const float l = 2.0f * s * (1.0f + s2 * (0.33333334f + s2 * (0.2f + s2 * (0.14285715f + s2 * 0.11111111f))));
  return l + (big ? 0.69314718f : 0.0f);
}

// log1p(e) for e in [0, 1], with the (u - 1) correction that keeps full relative accuracy.
inline float log1p_01_f(float e) {
  const float u = 1.0f + e;
  const float du = u - 1.0f;
  const float safe = du == 0.0f ? 1.0f : du;
  return du == 0.0f ? e : log_1_2_f(u) * (e / safe);
}

template <typename T>
inline T exp_nonpos(T a) {
  if constexpr (std::is_same_v<T, float>) return exp_nonpos_f(a); else return std::exp(a);
}
template <typename T>
inline T exp_any(T a) {
  if constexpr (std::is_same_v<T, float>) return exp_f(a); else return std::exp(a);
}
template <typename T>
inline T log1p_01(T e) {
  if constexpr (std::is_same_v<T, float>) return log1p_01_f(e); else return std::log1p(e);
}

}  // namespace
