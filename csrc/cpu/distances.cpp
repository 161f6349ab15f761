// Distance pass: per chunk, the float64 sum of |c - x| or (c - x)^2 for each measured candidate.
// The local chunk stays in cache while the candidates stream past it once each.
#include "cpu/elements.h"
#include "cpu/kernels.h"
#include "fomo/dispatch.h"

namespace fomo {
namespace cpu {
namespace FOMO_ISA {
namespace {

template <Norm N>
inline f64x4 term_vec(f64x4 diff) {
  if constexpr (N == Norm::l2) return diff * diff;
  else return abs_f64(diff);
}

// Sum of the distance terms over n contiguous elements: 16 elements a step into four float64
// accumulators, combined in a fixed order.
template <Norm N, class T>
double contiguous_sum(const T* x, const T* c, int64_t n) {
  constexpr int kLoad = kLanes<T>;
  constexpr int kStep = 16;
  f64x4 acc[4] = {};
  int64_t j = 0;
  for (; j + kStep <= n; j += kStep) {
    f64x4 xv[4], cv[4];
    for (int k = 0; k < kStep / kLoad; ++k) {
      load_f64(x + j + k * kLoad, xv + k * (kLoad / 4));
      load_f64(c + j + k * kLoad, cv + k * (kLoad / 4));
    }
    for (int k = 0; k < 4; ++k) acc[k] += term_vec<N>(cv[k] - xv[k]);
  }
  const f64x4 total = (acc[0] + acc[1]) + (acc[2] + acc[3]);
  double sum = (total[0] + total[1]) + (total[2] + total[3]);
  for (; j < n; ++j) sum += distance_term<N>(double(load_one(c + j)) - double(load_one(x + j)));
  return sum;
}

template <Norm N, class T>
double strided_sum(const T* x, int64_t sx, const T* c, int64_t sc, int64_t n) {
  double sum = 0.0;
  for (int64_t j = 0; j < n; ++j)
    sum += distance_term<N>(double(load_one(c + j * sc)) - double(load_one(x + j * sx)));
  return sum;
}

template <Norm N, class T>
double piece_sum(const ModelRuns& runs, const Piece& piece, int64_t candidate) {
  const Run& run = runs.runs[piece.run];
  const int64_t slot = piece.run * runs.num_candidates + candidate;
  const int64_t sc = runs.candidate_stride[slot];
  const T* x = static_cast<const T*>(run.local) + piece.begin * run.local_stride;
  const T* c = static_cast<const T*>(runs.candidate[slot]) + piece.begin * sc;
  if (run.local_stride == 1 && sc == 1) return contiguous_sum<N>(x, c, piece.count);
  return strided_sum<N>(x, run.local_stride, c, sc, piece.count);
}

template <Norm N>
void partials_for(const ModelRuns& runs, const ChunkTable& chunks, const int64_t* which,
                  int64_t count, double* partials) {
#pragma omp parallel for schedule(static) if (runs.total_elements * count > kParallelThreshold)
  for (int64_t c = 0; c < chunks.num_chunks; ++c) {
    for (int64_t k = 0; k < count; ++k) {
      double sum = 0.0;
      for (int64_t p = chunks.chunk_begin[c]; p < chunks.chunk_begin[c + 1]; ++p) {
        const Piece& piece = chunks.pieces[p];
        sum += dispatch_dtype(runs.runs[piece.run].dtype, [&](auto tag) {
          return piece_sum<N, typename decltype(tag)::type>(runs, piece, which[k]);
        });
      }
      partials[c * count + k] = sum;
    }
  }
}

}  // namespace

void distance_partials(const ModelRuns& runs, const ChunkTable& chunks, Norm norm,
                       const int64_t* which, int64_t count, double* partials) {
  if (norm == Norm::l2) partials_for<Norm::l2>(runs, chunks, which, count, partials);
  else partials_for<Norm::l1>(runs, chunks, which, count, partials);
}

}  // namespace FOMO_ISA
}  // namespace cpu
}  // namespace fomo
