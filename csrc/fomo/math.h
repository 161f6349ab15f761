// Element maths shared by the CPU and CUDA kernels (FOMO_HOST_DEVICE), so that the CPU tests
// exercise the exact code the GPU runs: storage conversions, the first-order score and the weight
// normalisation.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "fomo/ops.h"

// Internal linkage on the host: the CPU kernels are compiled once per instruction set, and a shared
// inline symbol could let the linker hand AVX2 code to the baseline build.
#if defined(__CUDACC__)
#define FOMO_HOST_DEVICE static __host__ __device__ __forceinline__
#else
#define FOMO_HOST_DEVICE static inline
#endif

namespace fomo {

// 16-bit storage types: bit patterns only; all arithmetic happens in float or double.
struct half_t {
  uint16_t bits;
};
struct bfloat16_t {
  uint16_t bits;
};

// The same bits as another type of the same size (std::bit_cast is C++20). memcpy is what both
// compilers turn into a plain register move, in host and in device code.
template <class To, class From>
FOMO_HOST_DEVICE To bit_cast(From from) {
  static_assert(sizeof(To) == sizeof(From), "bit_cast needs two types of one size");
  To to;
  memcpy(&to, &from, sizeof to);
  return to;
}

FOMO_HOST_DEVICE float float_from_bits(uint32_t u) { return bit_cast<float>(u); }
FOMO_HOST_DEVICE uint32_t bits_from_float(float f) { return bit_cast<uint32_t>(f); }
FOMO_HOST_DEVICE double double_from_bits(uint64_t u) { return bit_cast<double>(u); }
FOMO_HOST_DEVICE uint64_t bits_from_double(double d) { return bit_cast<uint64_t>(d); }

// bfloat16 is the top half of a float32, so widening is a shift.
FOMO_HOST_DEVICE float bf16_to_float(uint16_t h) { return float_from_bits(uint32_t(h) << 16); }

// Round to nearest even; NaN stays NaN (quietened) instead of rounding into infinity.
FOMO_HOST_DEVICE uint16_t float_to_bf16(float f) {
  uint32_t u = bits_from_float(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x0040u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return uint16_t(u >> 16);
}

// IEEE binary16 -> float, exact for every input including subnormals, infinities and NaN.
FOMO_HOST_DEVICE float half_to_float(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000u) << 16;
  const uint32_t exponent = (h >> 10) & 0x1fu;
  const uint32_t mantissa = h & 0x3ffu;
  if (exponent == 0) {
    // zero or subnormal: mantissa * 2^-24 is exact in float
    const float magnitude = float(mantissa) * 5.9604644775390625e-8f;
    return float_from_bits(sign | bits_from_float(magnitude));
  }
  if (exponent == 31) return float_from_bits(sign | 0x7f800000u | (mantissa << 13));
  return float_from_bits(sign | ((exponent + 112u) << 23) | (mantissa << 13));
}

// float -> IEEE binary16 with round to nearest even, overflow to infinity, gradual underflow.
FOMO_HOST_DEVICE uint16_t float_to_half(float f) {
  uint32_t u = bits_from_float(f);
  const uint16_t sign = uint16_t((u >> 16) & 0x8000u);
  u &= 0x7fffffffu;
  if (u >= 0x7f800000u) return uint16_t(sign | (u > 0x7f800000u ? 0x7e00u : 0x7c00u));
  if (u >= 0x477ff000u) return uint16_t(sign | 0x7c00u);  // rounds to >= 65520: infinity
  if (u < 0x38800000u) {
    // Below the smallest normal half: adding 0.5 puts the value's 2^-24 quantum in the last float
    // bit, so the float adder does the round-to-nearest-even for us.
    const float shifted = float_from_bits(u) + 0.5f;
    return uint16_t(sign | (bits_from_float(shifted) - 0x3f000000u));
  }
  // Normal: rebias the exponent (127 -> 15) and round the 13 dropped mantissa bits to even.
  u += 0xc8000fffu + ((u >> 13) & 1u);
  return uint16_t(sign | (u >> 13));
}

FOMO_HOST_DEVICE bool is_finite(double x) { return x - x == 0.0; }

// Distance term of one element difference; the sum over elements is taken in float64.
template <Norm N>
FOMO_HOST_DEVICE double distance_term(double diff) {
  return N == Norm::l2 ? diff * diff : std::fabs(diff);
}

FOMO_HOST_DEVICE double finish_distance(Norm norm, double sum) { return norm == Norm::l2 ? std::sqrt(sum) : sum; }

// Whether a candidate's distance is needed: always when every score is wanted, otherwise only for
// candidates that improve on the baseline (a candidate with L_n >= L0 gets weight 0 regardless).
FOMO_HOST_DEVICE bool needs_distance(bool all_scores, double local_loss, double candidate_loss) {
  return all_scores || (is_finite(local_loss) && is_finite(candidate_loss) && candidate_loss < local_loss);
}

// s = (L0 - Ln) / (d + eps). A candidate is rejected (score 0) when the denominator is 0, when any
// input is NaN or infinite, or when the quotient overflows: a diverged or poisoned candidate must
// never reach the model. The guard rejects a candidate farther than max_distance too (infinity:
// no guard), so that a finite poisoned model (parameters of 1e30) cannot take a client's model by
// being the only improving one. A candidate whose distance was not measured is skipped (score NaN).
FOMO_HOST_DEVICE double first_order_score(double local_loss, double candidate_loss, double distance, double eps,
                                          double max_distance, bool measured, uint8_t* status) {
  if (!is_finite(local_loss) || !is_finite(candidate_loss)) {
    *status = kRejected;
    return 0.0;
  }
  if (!measured) {
    *status = kSkipped;
    return NAN;
  }
  const double denominator = distance + eps;
  if (!is_finite(distance) || denominator == 0.0 || distance > max_distance) {
    *status = kRejected;
    return 0.0;
  }
  const double score = (local_loss - candidate_loss) / denominator;
  if (!is_finite(score)) {
    *status = kRejected;
    return 0.0;
  }
  *status = kAccepted;
  return score;
}

// w_n = max(s_n, 0) / sum_m max(s_m, 0) over accepted candidates, summed in index order; every
// weight is 0 when no accepted score is positive. Scores near the float64 maximum could overflow
// the sum: then every score is first divided by the largest (each term <= 1, the sum <= M).
FOMO_HOST_DEVICE void normalise_weights(const double* scores, const uint8_t* status, int64_t m, double* weights) {
  double total = 0.0, largest = 0.0;
  for (int64_t i = 0; i < m; ++i) {
    if (status[i] == kAccepted && scores[i] > 0.0) {
      total += scores[i];
      largest = scores[i] > largest ? scores[i] : largest;
    }
  }
  const double scale = is_finite(total) ? 1.0 : largest;
  if (scale != 1.0) {
    total = 0.0;
    for (int64_t i = 0; i < m; ++i)
      if (status[i] == kAccepted && scores[i] > 0.0) total += scores[i] / scale;
  }
  for (int64_t i = 0; i < m; ++i)
    weights[i] = (total > 0.0 && status[i] == kAccepted && scores[i] > 0.0) ? (scores[i] / scale) / total : 0.0;
}

}  // namespace fomo
