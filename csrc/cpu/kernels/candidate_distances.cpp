// The kernel of candidate_distances (compiled once per instruction set; driven by
// csrc/cpu/candidate_distances.cpp). Distance pass: per chunk, the float64 sum of |c - x| or
// (c - x)^2 for each measured candidate. The local chunk stays in cache while the candidates
// stream past it, a few at a time.
#include "cpu/elements.h"
#include "cpu/kernels.h"
#include "fomo/dispatch.h"

namespace fomo {
namespace cpu {
namespace FOMO_ISA {
namespace {

template <Norm N>
inline f64x4 term_vec(f64x4 diff) {
  if constexpr (N == Norm::l2)
    return diff * diff;
  else
    return abs_f64(diff);
}

template <Norm N>
inline f32x8 term_vec(f32x8 diff) {
  if constexpr (N == Norm::l2)
    return diff * diff;
  else
    return (f32x8)((u32x8)diff & 0x7fffffffu);
}

// Element difference in the compute type: exact for float64 storage; for 16/32-bit storage one
// float32 rounding (relative error <= 2^-24), which halves the float64 conversions that would
// otherwise bound this pass. Squares and sums are float64.
template <Norm N, class T>
inline double scalar_term(const T* c, const T* x) {
  const compute_t<T> diff = load_one(c) - load_one(x);
  return distance_term<N>(double(diff));
}

constexpr int kGroup = 4;                // candidates sharing each load of the local chunk
constexpr int64_t kPrefetchAhead = 512;  // elements: 16 cache lines of 16-bit candidates

// Whether a piece's float32 quad terms may have lost precision to underflow. Each of the n / 4
// quad terms then carries at most 7 * 2^-150 of absolute error (four squares and three sums rounded
// in float32's subnormal range), n * 2^-149 in all: below 2^-53 of any sum above n * 2^-96, so
// only smaller sums are redone. Only l2 squares, and only bfloat16 reaches that far: float16's
// smallest difference, 2^-24, squares to a normal float32.
template <Norm N, class T>
inline bool may_have_underflowed(double sum, int64_t n) {
  if constexpr (N == Norm::l2 && std::is_same<T, bfloat16_t>::value)
    return sum < double(n) * 0x1p-96;
  else
    return false;
}

// Sums of the distance terms of G candidates over n contiguous elements into two float64
// accumulators per candidate, combined in a fixed order. Each candidate's arithmetic is the same
// whatever G is, so grouping never changes a result.
template <Norm N, class T, int G, bool kQuads = kHalfWidth<T>>
void contiguous_sums(const T* x, const T* const* c, int64_t n, double* sums) {
  f64x4 acc[G][2] = {};
  int64_t j = 0;
  // 16-bit storage: the terms of four elements (32 a step, in load_pair's order) are added in
  // float32, as (t0 + t1) + (t2 + t3), before widening: a quarter of the float64 conversions that
  // bound this pass, for two more float32 roundings per term.
  if constexpr (kQuads) {
    for (; j + 32 <= n; j += 32) {
      f32x8 x0, x1, x2, x3;
      load_pair(x + j, x0, x1);
      load_pair(x + j + 16, x2, x3);
      for (int g = 0; g < G; ++g) {
        f32x8 c0, c1, c2, c3;
        __builtin_prefetch(c[g] + j + kPrefetchAhead);
        load_pair(c[g] + j, c0, c1);
        load_pair(c[g] + j + 16, c2, c3);
        f64x4 wide[2];
        widen((term_vec<N>(c0 - x0) + term_vec<N>(c1 - x1)) + (term_vec<N>(c2 - x2) + term_vec<N>(c3 - x3)), wide);
        acc[g][0] += wide[0];
        acc[g][1] += wide[1];
      }
    }
  }
  for (; j + 8 <= n; j += 8) {
    if constexpr (std::is_same<T, double>::value) {
      const f64x4 x0 = load_vec(x + j), x1 = load_vec(x + j + 4);
      for (int g = 0; g < G; ++g) {
        acc[g][0] += term_vec<N>(load_vec(c[g] + j) - x0);
        acc[g][1] += term_vec<N>(load_vec(c[g] + j + 4) - x1);
      }
    } else {
      const f32x8 xv = load_vec(x + j);
      for (int g = 0; g < G; ++g) {
        f64x4 wide[2];
        __builtin_prefetch(c[g] + j + kPrefetchAhead);
        widen(load_vec(c[g] + j) - xv, wide);
        acc[g][0] += term_vec<N>(wide[0]);
        acc[g][1] += term_vec<N>(wide[1]);
      }
    }
  }
  for (int g = 0; g < G; ++g) {
    const f64x4 total = acc[g][0] + acc[g][1];
    double sum = (total[0] + total[1]) + (total[2] + total[3]);
    for (int64_t k = j; k < n; ++k) sum += scalar_term<N>(c[g] + k, x + k);
    sums[g] = sum;
    // The float32 quad terms are exact to float32 rounding only inside float32's range: a bfloat16
    // difference beyond 9e18 overflows its square (or their sum), one below 1e-19 squares into
    // float32's subnormals (below 1e-23 into zero). Then the candidate's piece is summed again
    // without the quads (a candidate holding inf or NaN gives inf or NaN again).
    if constexpr (kQuads)
      if (!(sum - sum == 0.0) || may_have_underflowed<N, T>(sum, n))
        contiguous_sums<N, T, 1, false>(x, c + g, n, sums + g);
  }
}

template <Norm N, class T>
double strided_sum(const T* x, int64_t sx, const T* c, int64_t sc, int64_t n) {
  double sum = 0.0;
  for (int64_t j = 0; j < n; ++j) sum += scalar_term<N>(c + j * sc, x + j * sx);
  return sum;
}

// Adds the piece's distance terms of candidates which[0..count) to partials[0..count).
template <Norm N, class T>
void piece_sums(const ModelRuns& runs, const Piece& piece, const int64_t* which, int64_t count, double* partials) {
  const Run& run = runs.runs[piece.run];
  const T* x = static_cast<const T*>(run.local) + piece.begin * run.local_stride;
  for (int64_t k0 = 0; k0 < count; k0 += kGroup) {
    const int group = int(count - k0 < kGroup ? count - k0 : kGroup);
    const T* c[kGroup];
    int64_t sc[kGroup];
    bool contiguous = run.local_stride == 1;
    for (int g = 0; g < group; ++g) {
      const int64_t slot = piece.run * runs.num_candidates + which[k0 + g];
      sc[g] = runs.candidate_stride[slot];
      c[g] = static_cast<const T*>(runs.candidate[slot]) + piece.begin * sc[g];
      contiguous = contiguous && sc[g] == 1;
    }
    double sums[kGroup];
    if (!contiguous) {
      // Each candidate on its own, with the arithmetic its layout gets in any group: a result must
      // not depend on which other candidates are measured with it (all_scores on or off).
      for (int g = 0; g < group; ++g) {
        if (run.local_stride == 1 && sc[g] == 1)
          contiguous_sums<N, T, 1>(x, c + g, piece.count, sums + g);
        else
          sums[g] = strided_sum<N>(x, run.local_stride, c[g], sc[g], piece.count);
      }
    } else if (group == 4) {
      contiguous_sums<N, T, 4>(x, c, piece.count, sums);
    } else if (group == 3) {
      contiguous_sums<N, T, 3>(x, c, piece.count, sums);
    } else if (group == 2) {
      contiguous_sums<N, T, 2>(x, c, piece.count, sums);
    } else {
      contiguous_sums<N, T, 1>(x, c, piece.count, sums);
    }
    for (int g = 0; g < group; ++g) partials[k0 + g] += sums[g];
  }
}

template <Norm N>
void partials_for(const ModelRuns& runs, const ChunkTable& chunks, const int64_t* which, int64_t count,
                  double* partials) {
#pragma omp parallel for schedule(static) if (runs.total_elements * count > kParallelThreshold)
  for (int64_t c = 0; c < chunks.num_chunks; ++c) {
    double* chunk_partials = partials + c * count;
    for (int64_t k = 0; k < count; ++k) chunk_partials[k] = 0.0;
    for (int64_t p = chunks.chunk_begin[c]; p < chunks.chunk_begin[c + 1]; ++p) {
      const Piece& piece = chunks.pieces[p];
      dispatch_dtype(runs.runs[piece.run].dtype, [&](auto tag) {
        piece_sums<N, typename decltype(tag)::type>(runs, piece, which, count, chunk_partials);
      });
    }
  }
}

}  // namespace

void distance_partials(const ModelRuns& runs, const ChunkTable& chunks, Norm norm, const int64_t* which, int64_t count,
                       double* partials) {
  if (norm == Norm::l2)
    partials_for<Norm::l2>(runs, chunks, which, count, partials);
  else
    partials_for<Norm::l1>(runs, chunks, which, count, partials);
}

}  // namespace FOMO_ISA
}  // namespace cpu
}  // namespace fomo
