// Batched evaluation of dense networks (fomo_core.evaluate_candidates): the problem description
// over raw pointers, the element maths shared by the CPU and CUDA kernels (activations, the
// exponential, the per-sample losses), and the entry points of both.
//
// The element functions are branch-free (selects through bit masks, never a floating-point
// compare feeding a branch) so that GCC vectorises the CPU loops that call them without
// -ffast-math, and the GPU runs the very same code.
#pragma once

#include <cmath>
#include <cstdint>

#include "fomo/check.h"
#include "fomo/math.h"
#include "fomo/ops.h"

namespace fomo {

// The codes of activations and outputs are defined here only: the extension exports these tables
// (fomo_core._C.ACTIVATIONS and _C.OUTPUTS, name -> code) and the Python side takes its names and
// codes from them.
enum class Activation : int32_t { identity = 0, relu = 1, tanh = 2, logistic = 3 };
constexpr const char* kActivationNames[] = {"identity", "relu", "tanh", "logistic"};  // by code

// The loss at the output layer. softmax: cross-entropy over C logits, labels in [0, C).
// logistic: one logit z, labels in {0, 1}, loss softplus(z) - y z (scikit-learn's binary
// MLPClassifier). squared_error: identity output, mean over the C outputs of (z - t)^2.
enum class DenseOutput : int32_t { softmax = 0, logistic = 1, squared_error = 2 };
constexpr const char* kDenseOutputNames[] = {"softmax", "logistic", "squared_error"};  // by code

struct DenseNet {
  int64_t num_layers = 0;                   // L >= 1
  const int64_t* sizes = nullptr;           // [L + 1]: inputs, hidden widths, outputs
  const Activation* activations = nullptr;  // [L - 1]: after each hidden layer
  DenseOutput output = DenseOutput::softmax;
};

// Where one layer of one candidate lives, in the candidate's own memory (never copied):
// W(o, i) = weight[o * row_stride + i * col_stride] for output o and input i, whatever the
// caller's layout (out_in, in_out, or any strided view); bias(o) = bias[o * bias_stride].
struct DenseLayerParams {
  const void* weight;
  int64_t row_stride;
  int64_t col_stride;
  const void* bias;
  int64_t bias_stride;
};

struct DenseCandidates {
  DType dtype = DType::float32;              // all candidates; float16/bfloat16 compute in float32
  int64_t count = 0;                         // M
  const DenseLayerParams* layers = nullptr;  // [M * L], candidate-major
};

// The validation set. X(b, d) = x[b * row_stride + d * col_stride] in any of the four dtypes.
struct DenseData {
  int64_t rows = 0;  // B >= 1
  DType dtype = DType::float32;
  const void* x = nullptr;
  int64_t row_stride = 0;
  int64_t col_stride = 1;
  const int64_t* labels = nullptr;        // [B] for softmax and logistic
  const double* targets = nullptr;        // [B, C] row-major for squared_error
  const double* sample_weight = nullptr;  // [B] or null (every weight 1)
};

// Caller-allocated, one value per candidate: (weighted) mean loss and accuracy (NaN for
// squared_error). Host memory for the CPU kernel, device memory for the CUDA one.
struct DenseResult {
  double* loss;
  double* accuracy;
};

// ---------------------------------------------------------------------------------------------
// Size arithmetic: the one place where the counts of a dense evaluation are multiplied.
//
// Layer widths come from the caller and arrays may have stride 0, so a width of 2^61 costs no
// memory: unchecked products of widths wrap around (a buffer overrun, or a division by a count
// that wrapped to 0). dense_param_count() and check_dense_sizes() form every product the bindings
// and the CPU and CUDA plans build from the widths, M and B, with overflow-checked arithmetic and
// with generous caps for the plans' own factors (a tile of at most kDenseMaxTileSamples samples,
// at most 8 bytes per value, at most kDenseMaxThreads scratch areas): a problem that passes cannot
// wrap in any later product, which are all bounded by the ones checked here.

constexpr int64_t kDenseMaxTileSamples = 64;  // CPU tiles are <= 64 samples, CUDA tiles 32
constexpr int64_t kDenseMaxThreads = 4096;

namespace dense_sizes {
inline int64_t add(int64_t a, int64_t b, const char* what) {
  int64_t r;
  if (__builtin_add_overflow(a, b, &r)) fail_value(what);
  return r;
}
inline int64_t mul(int64_t a, int64_t b, const char* what) {
  int64_t r;
  if (__builtin_mul_overflow(a, b, &r)) fail_value(what);
  return r;
}
}  // namespace dense_sizes

// P = sum over layers of n_in * n_out + n_out; a ValueError when it does not fit in 64 bits.
inline int64_t dense_param_count(int64_t num_layers, const int64_t* sizes) {
  const char* what = "sizes are too large: the network's parameter count does not fit in 64 bits";
  int64_t p = 0;
  for (int64_t l = 0; l < num_layers; ++l)
    p = dense_sizes::add(p, dense_sizes::add(dense_sizes::mul(sizes[l], sizes[l + 1], what), sizes[l + 1], what), what);
  return p;
}

// The scratch, partial-sum and layer-table sizes of both back ends for M candidates and B samples
// (see above); a ValueError naming what is too large.
inline void check_dense_sizes(const DenseNet& net, int64_t candidates, int64_t rows) {
  using dense_sizes::add;
  using dense_sizes::mul;
  dense_param_count(net.num_layers, net.sizes);
  int64_t widest = 0;
  for (int64_t l = 0; l <= net.num_layers; ++l) widest = net.sizes[l] > widest ? net.sizes[l] : widest;
  const int64_t m = candidates > 1 ? candidates : 1;
  const char* scratch = "sizes are too large: the activations of one tile of samples do not fit in 64-bit byte counts";
  // Per scratch area: X tile [D], the first layer of up to M candidates [M * H1], two later-layer
  // buffers and the per-sample softmax state, each [tile] values (CPU); 2 * widest per candidate (CUDA).
  const int64_t values = add(add(net.sizes[0], mul(add(m, 3, scratch), widest, scratch), scratch), 4, scratch);
  mul(mul(mul(values, kDenseMaxTileSamples, scratch), 8, scratch), kDenseMaxThreads, scratch);
  const char* tables = "the per-candidate tables are too large: M x (B + layers) does not fit in 64-bit byte counts";
  mul(mul(m, add(rows, net.num_layers, tables), tables), 64, tables);
}

// Both back ends trust their caller (the bindings and fomo_core/dense.py check every argument):
// L >= 1 positive widths, B >= 1 rows, labels in range for a classification output (targets for
// squared_error), sample weights finite, >= 0 with a positive sum, sizes that passed
// check_dense_sizes(). Deterministic whatever the thread count or the GPU.
namespace cpu {
void evaluate_candidates(const DenseNet& net, const DenseCandidates& candidates, const DenseData& data,
                         DenseResult result);
}  // namespace cpu

namespace cuda {
// The CUDA twin: every pointer of `data`, every DenseLayerParams pointer and `result` are memory of
// CUDA device `where.device`; `candidates.layers` and `net` are host memory. Queued on
// `where.stream` (the current device is restored afterwards); returns without waiting for it.
void evaluate_candidates(const DenseNet& net, const DenseCandidates& candidates, const DenseData& data,
                         DenseResult result, DeviceStream where);
}  // namespace cuda

// ---------------------------------------------------------------------------------------------
// Element maths (float or double).

// a where c, else b: a bit-mask select, so that no floating-point compare becomes a branch.
FOMO_HOST_DEVICE float dense_select(bool c, float a, float b) {
  const uint32_t mask = 0u - uint32_t(c);
  return float_from_bits((bits_from_float(a) & mask) | (bits_from_float(b) & ~mask));
}

FOMO_HOST_DEVICE double dense_select(bool c, double a, double b) {
  const uint64_t mask = uint64_t(0) - uint64_t(c);
  return double_from_bits((bits_from_double(a) & mask) | (bits_from_double(b) & ~mask));
}

// exp(y) = scale * (1 + q) with scale = 2^n, |y - n ln 2| <= ln 2 / 2 and q = e^r - 1 from its
// Taylor series (degree 7 for float: truncation below 1e-8; degree 13 for double: below 1e-17).
// y is clamped to the range where 2^n is a normal number: below it e^y is under 2^-126 (float)
// or 2^-1021 (double) and is returned as that bound; NaN passes through.
template <class T>
struct ExpParts {
  T scale;
  T q;
};

FOMO_HOST_DEVICE ExpParts<float> exp_parts(float y) {
  y = dense_select(y < -87.0f, -87.0f, y);
  y = dense_select(y > 88.0f, 88.0f, y);
  const float shifter = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer in the low bits
  const float v = y * 1.44269504088896341f + shifter;
  const float n = v - shifter;
  const float r = (y - n * 0.693359375f) - n * -2.12194440e-4f;  // ln 2 in two parts
  float q = 1.0f / 5040.0f;
  q = q * r + 1.0f / 720.0f;
  q = q * r + 1.0f / 120.0f;
  q = q * r + 1.0f / 24.0f;
  q = q * r + 1.0f / 6.0f;
  q = q * r + 0.5f;
  q = q * r + 1.0f;
  q = q * r;
  return {float_from_bits((bits_from_float(v) + 127u) << 23), q};
}

FOMO_HOST_DEVICE ExpParts<double> exp_parts(double y) {
  y = dense_select(y < -708.0, -708.0, y);
  y = dense_select(y > 709.0, 709.0, y);
  const double shifter = 6755399441055744.0;  // 1.5 * 2^52
  const double v = y * 1.4426950408889634 + shifter;
  const double n = v - shifter;
  const double r = (y - n * 6.93147180369123816490e-01) - n * 1.90821492927058770002e-10;
  double q = 1.0 / 6227020800.0;  // 1/13!
  q = q * r + 1.0 / 479001600.0;
  q = q * r + 1.0 / 39916800.0;
  q = q * r + 1.0 / 3628800.0;
  q = q * r + 1.0 / 362880.0;
  q = q * r + 1.0 / 40320.0;
  q = q * r + 1.0 / 5040.0;
  q = q * r + 1.0 / 720.0;
  q = q * r + 1.0 / 120.0;
  q = q * r + 1.0 / 24.0;
  q = q * r + 1.0 / 6.0;
  q = q * r + 0.5;
  q = q * r + 1.0;
  q = q * r;
  return {double_from_bits((bits_from_double(v) + 1023u) << 52), q};
}

template <class T>
FOMO_HOST_DEVICE T dense_exp(T y) {
  const ExpParts<T> e = exp_parts(y);
  return e.scale * e.q + e.scale;
}

// e^y - 1 without the cancellation near 0 (there n = 0, scale = 1 and the result is q itself).
template <class T>
FOMO_HOST_DEVICE T dense_expm1(T y) {
  const ExpParts<T> e = exp_parts(y);
  return e.scale * e.q + (e.scale - T(1));
}

template <class T>
FOMO_HOST_DEVICE T dense_abs(T x) {
  return dense_select(x < T(0), -x, x);
}

// tanh(x) = sign(x) * (-m) / (2 + m) with m = expm1(-2|x|): accurate near 0 and saturating.
template <class T>
FOMO_HOST_DEVICE T dense_tanh(T x) {
  const T m = dense_expm1(T(-2) * dense_abs(x));
  const T t = -m / (T(2) + m);
  return dense_select(x < T(0), -t, t);
}

// 1 / (1 + e^-x), evaluated through e = e^-|x| <= 1 on both sides.
template <class T>
FOMO_HOST_DEVICE T dense_logistic(T x) {
  const T e = dense_exp(-dense_abs(x));
  const T inv = T(1) / (T(1) + e);
  return dense_select(x < T(0), e * inv, inv);
}

template <class T>
FOMO_HOST_DEVICE T dense_activate(Activation a, T x) {
  switch (a) {
    case Activation::relu: return dense_select(x < T(0), T(0), x);  // NaN stays NaN
    case Activation::tanh: return dense_tanh(x);
    case Activation::logistic: return dense_logistic(x);
    default: return x;
  }
}

// softplus(z) - y z = -log(sigmoid(z)) for y = 1, -log(1 - sigmoid(z)) for y = 0.
template <class T>
FOMO_HOST_DEVICE T binary_logistic_loss(T z, int64_t label) {
  const T positive = dense_select(z > T(0), z, T(0));
  return positive + T(log1p(dense_exp(-dense_abs(z)))) - (label == 1 ? z : T(0));
}

// Softmax cross-entropy of one sample from max (the largest logit), sum_exp (sum of
// e^(z_c - max)) and the label's logit: log-sum-exp minus the label's logit.
template <class T>
FOMO_HOST_DEVICE T softmax_loss(T max, T sum_exp, T label_logit) {
  return max + T(log(sum_exp)) - label_logit;
}

}  // namespace fomo
