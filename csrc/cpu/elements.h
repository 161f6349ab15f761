// Loads and stores of storage elements for the CPU kernels: 8 (or 4 for float64) elements at a time
// widened to the compute type, in GCC/Clang vector extensions so that one source compiles to SSE2
// in the base build and to AVX2/F16C in the avx2 build. Only kernel sources include this, inside
// their instruction-set namespace (FOMO_ISA), so no symbol is shared between the builds.
#pragma once

#if !defined(FOMO_ISA)
#error "elements.h belongs to the per-instruction-set kernel sources (FOMO_ISA undefined)"
#endif

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "fomo/math.h"

#if defined(__AVX2__) && defined(__F16C__)
#include <immintrin.h>
#define FOMO_X86_AVX2 1  // GCC lowers some vector-extension conversions poorly; use intrinsics here
#endif

#if defined(__FLT16_MANT_DIG__)
#define FOMO_NATIVE_FLOAT16 1  // the compiler has _Float16 (hardware conversions with F16C)
#endif

namespace fomo {
namespace cpu {
namespace FOMO_ISA {

typedef float f32x8 __attribute__((vector_size(32)));
typedef double f64x4 __attribute__((vector_size(32)));
typedef uint32_t u32x8 __attribute__((vector_size(32)));
typedef uint16_t u16x8 __attribute__((vector_size(16)));
typedef uint16_t u16x16 __attribute__((vector_size(32)));
typedef int64_t i64x4 __attribute__((vector_size(32)));

// Arithmetic type for a storage type: float64 computes in double, everything else in float.
template <class T>
using compute_t = typename std::conditional<std::is_same<T, double>::value, double, float>::type;
template <class T>
using vec_t = typename std::conditional<std::is_same<T, double>::value, f64x4, f32x8>::type;
template <class T>
constexpr int kLanes = std::is_same<T, double>::value ? 4 : 8;
template <class T>
constexpr bool kHalfWidth = std::is_same<T, half_t>::value || std::is_same<T, bfloat16_t>::value;

template <class V, class T>
inline V load_raw(const T* p) {
  V v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
template <class V, class T>
inline void store_raw(T* p, V v) {
  std::memcpy(p, &v, sizeof v);
}

// ---- scalars ----
inline float load_one(const float* p) { return *p; }
inline double load_one(const double* p) { return *p; }
inline float load_one(const bfloat16_t* p) { return bf16_to_float(p->bits); }
inline float load_one(const half_t* p) {
#if defined(FOMO_NATIVE_FLOAT16)
  _Float16 h;
  std::memcpy(&h, p, 2);
  return float(h);
#else
  return half_to_float(p->bits);
#endif
}

inline void store_one(float* p, float v) { *p = v; }
inline void store_one(double* p, double v) { *p = v; }
inline void store_one(bfloat16_t* p, float v) { p->bits = float_to_bf16(v); }
inline void store_one(half_t* p, float v) {
#if defined(FOMO_NATIVE_FLOAT16)
  const _Float16 h = _Float16(v);
  std::memcpy(p, &h, 2);
#else
  p->bits = float_to_half(v);
#endif
}

// ---- vectors of kLanes<T> elements ----
inline f32x8 load_vec(const float* p) { return load_raw<f32x8>(p); }
inline f64x4 load_vec(const double* p) { return load_raw<f64x4>(p); }
inline f32x8 load_vec(const bfloat16_t* p) {
#if defined(FOMO_X86_AVX2)
  const __m128i bits = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return (f32x8)_mm256_slli_epi32(_mm256_cvtepu16_epi32(bits), 16);
#else
  const u32x8 wide = __builtin_convertvector(load_raw<u16x8>(p), u32x8);
  return (f32x8)(wide << 16);
#endif
}
inline f32x8 load_vec(const half_t* p) {
#if defined(FOMO_X86_AVX2)
  return (f32x8)_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
#elif defined(FOMO_NATIVE_FLOAT16)
  typedef _Float16 f16x8 __attribute__((vector_size(16)));
  return __builtin_convertvector(load_raw<f16x8>(p), f32x8);
#else
  f32x8 v;
  for (int i = 0; i < 8; ++i) v[i] = half_to_float(p[i].bits);
  return v;
#endif
}

inline void store_vec(float* p, f32x8 v) { store_raw(p, v); }
inline void store_vec(double* p, f64x4 v) { store_raw(p, v); }
// float32 -> bfloat16 bit patterns (in the low half of each lane), the rounding of float_to_bf16
// (math.h) lane by lane.
inline u32x8 bf16_bits(f32x8 v) {
  const u32x8 u = (u32x8)v;
  const u32x8 magnitude = u & 0x7fffffffu;
  const u32x8 rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  const u32x8 quiet_nan = (u >> 16) | 0x0040u;
  const u32x8 is_nan = (u32x8)(magnitude > 0x7f800000u);
  return (quiet_nan & is_nan) | (rounded & ~is_nan);
}

inline void store_vec(bfloat16_t* p, f32x8 v) {
  const u32x8 bits = bf16_bits(v);
#if defined(FOMO_X86_AVX2)
  // every lane is below 2^16, so unsigned saturation packs exactly; fix the lane order after
  const __m256i packed = _mm256_packus_epi32((__m256i)bits, (__m256i)bits);
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_castsi256_si128(_mm256_permute4x64_epi64(packed, 0x08)));
#else
  store_raw(p, __builtin_convertvector(bits, u16x8));
#endif
}
inline void store_vec(half_t* p, f32x8 v) {
#if defined(FOMO_X86_AVX2)
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_cvtps_ph((__m256)v, _MM_FROUND_TO_NEAREST_INT));
#elif defined(FOMO_NATIVE_FLOAT16)
  typedef _Float16 f16x8 __attribute__((vector_size(16)));
  store_raw(p, __builtin_convertvector(v, f16x8));
#else
  for (int i = 0; i < 8; ++i) p[i].bits = float_to_half(v[i]);
#endif
}

// ---- 16 elements as two vectors (the 16-bit kernels' step) ----
// For bfloat16 the two vectors hold the elements interleaved by 128-bit lane (lo: 0-3 and 8-11, hi:
// 4-7 and 12-15): what in-lane unpacks give, without the zero-extension and shift of load_vec, and
// what one in-lane pack puts back in order. Every build uses this order; the update is element-wise
// and never sees it, the distance pass sums the same terms in the same pairs in every build.
template <class T>
inline void load_pair(const T* p, f32x8& lo, f32x8& hi) {
  lo = load_vec(p);
  hi = load_vec(p + 8);
}
template <class T>
inline void store_pair(T* p, f32x8 lo, f32x8 hi) {
  store_vec(p, lo);
  store_vec(p + 8, hi);
}

inline void load_pair(const bfloat16_t* p, f32x8& lo, f32x8& hi) {
#if defined(FOMO_X86_AVX2)
  const __m256i bits = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  const __m256i zero = _mm256_setzero_si256();
  lo = (f32x8)_mm256_unpacklo_epi16(zero, bits);
  hi = (f32x8)_mm256_unpackhi_epi16(zero, bits);
#else
  const u16x16 v = load_raw<u16x16>(p);
  lo = (f32x8)(__builtin_convertvector(__builtin_shufflevector(v, v, 0, 1, 2, 3, 8, 9, 10, 11), u32x8) << 16);
  hi = (f32x8)(__builtin_convertvector(__builtin_shufflevector(v, v, 4, 5, 6, 7, 12, 13, 14, 15), u32x8) << 16);
#endif
}

inline void store_pair(bfloat16_t* p, f32x8 lo, f32x8 hi) {
  const u32x8 a = bf16_bits(lo), b = bf16_bits(hi);
#if defined(FOMO_X86_AVX2)
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm256_packus_epi32((__m256i)a, (__m256i)b));
#else
  const u16x8 a16 = __builtin_convertvector(a, u16x8), b16 = __builtin_convertvector(b, u16x8);
  store_raw(p, __builtin_shufflevector(a16, b16, 0, 1, 2, 3, 8, 9, 10, 11, 4, 5, 6, 7, 12, 13, 14, 15));
#endif
}

// 8 floats widened to float64, as two vectors.
inline void widen(f32x8 v, f64x4* out) {
#if defined(FOMO_X86_AVX2)
  out[0] = (f64x4)_mm256_cvtps_pd(_mm256_castps256_ps128((__m256)v));
  out[1] = (f64x4)_mm256_cvtps_pd(_mm256_extractf128_ps((__m256)v, 1));
#else
  out[0] = __builtin_convertvector(__builtin_shufflevector(v, v, 0, 1, 2, 3), f64x4);
  out[1] = __builtin_convertvector(__builtin_shufflevector(v, v, 4, 5, 6, 7), f64x4);
#endif
}

inline f64x4 abs_f64(f64x4 v) { return (f64x4)((i64x4)v & INT64_MAX); }

}  // namespace FOMO_ISA
}  // namespace cpu
}  // namespace fomo
