// Update pass: out = x + sum_k w_k (c_k - x) over the candidates with a nonzero weight only, in
// blocks whose accumulator stays in L1 while each candidate streams through once.
#include <cstring>

#include "cpu/elements.h"
#include "cpu/kernels.h"
#include "fomo/dispatch.h"

namespace fomo {
namespace cpu {
namespace FOMO_ISA {
namespace {

constexpr int64_t kBlock = 512;

// Where candidate which[k] keeps this piece, and with which stride.
template <class T>
struct CandidateRef {
  const T* data;
  int64_t stride;
};

template <class T>
CandidateRef<T> candidate_piece(const ModelRuns& runs, const Piece& piece, int64_t candidate) {
  const int64_t slot = piece.run * runs.num_candidates + candidate;
  const int64_t stride = runs.candidate_stride[slot];
  return {static_cast<const T*>(runs.candidate[slot]) + piece.begin * stride, stride};
}

template <class T>
void update_contiguous(const ModelRuns& runs, const Piece& piece, const T* x, T* out,
                       const int64_t* which, const double* weights, int64_t count) {
  using C = compute_t<T>;
  using V = vec_t<T>;
  constexpr int L = kLanes<T>;
  alignas(32) C acc[kBlock];
  for (int64_t b = 0; b < piece.count; b += kBlock) {
    const int64_t m = piece.count - b < kBlock ? piece.count - b : kBlock;
    const int64_t mv = m - m % L;
    const T* xb = x + b;
    for (int64_t j = 0; j < m; ++j) acc[j] = C(0);
    for (int64_t k = 0; k < count; ++k) {
      const T* cb = candidate_piece<T>(runs, piece, which[k]).data + b;
      const C w = C(weights[k]);
      for (int64_t j = 0; j < mv; j += L)
        store_raw(acc + j, load_raw<V>(acc + j) + w * (load_vec(cb + j) - load_vec(xb + j)));
      for (int64_t j = mv; j < m; ++j) acc[j] += w * (load_one(cb + j) - load_one(xb + j));
    }
    T* ob = out + b;
    for (int64_t j = 0; j < mv; j += L) store_vec(ob + j, load_vec(xb + j) + load_raw<V>(acc + j));
    for (int64_t j = mv; j < m; ++j) store_one(ob + j, load_one(xb + j) + acc[j]);
  }
}

// Any strides: the same arithmetic, element by element, candidates in the same order.
template <class T>
void update_strided(const ModelRuns& runs, const Piece& piece, const T* x, int64_t sx, T* out,
                    int64_t so, const int64_t* which, const double* weights, int64_t count) {
  using C = compute_t<T>;
  for (int64_t j = 0; j < piece.count; ++j) {
    const C xj = load_one(x + j * sx);
    C acc = C(0);
    for (int64_t k = 0; k < count; ++k) {
      const CandidateRef<T> c = candidate_piece<T>(runs, piece, which[k]);
      acc += C(weights[k]) * (load_one(c.data + j * c.stride) - xj);
    }
    store_one(out + j * so, xj + acc);
  }
}

// No candidate moves the model: out takes local's bit patterns (signed zeros and NaN payloads too).
template <class T>
void copy_bits(const T* x, int64_t sx, T* out, int64_t so, int64_t n) {
  if (x == out && sx == so) return;
  if (sx == 1 && so == 1) {
    std::memmove(out, x, size_t(n) * sizeof(T));
    return;
  }
  for (int64_t j = 0; j < n; ++j) std::memcpy(out + j * so, x + j * sx, sizeof(T));
}

template <class T>
void update_piece(const ModelRuns& runs, const Piece& piece, const int64_t* which,
                  const double* weights, int64_t count) {
  const Run& run = runs.runs[piece.run];
  const T* x = static_cast<const T*>(run.local) + piece.begin * run.local_stride;
  T* out = static_cast<T*>(run.out) + piece.begin * run.out_stride;
  if (count == 0) return copy_bits(x, run.local_stride, out, run.out_stride, piece.count);
  bool contiguous = run.local_stride == 1 && run.out_stride == 1;
  for (int64_t k = 0; k < count && contiguous; ++k)
    contiguous = candidate_piece<T>(runs, piece, which[k]).stride == 1;
  if (contiguous) update_contiguous(runs, piece, x, out, which, weights, count);
  else update_strided(runs, piece, x, run.local_stride, out, run.out_stride, which, weights, count);
}

}  // namespace

void weighted_update(const ModelRuns& runs, const ChunkTable& chunks, const int64_t* which,
                     const double* weights, int64_t count) {
#pragma omp parallel for schedule(static) if (runs.total_elements * (count + 1) > kParallelThreshold)
  for (int64_t c = 0; c < chunks.num_chunks; ++c) {
    for (int64_t p = chunks.chunk_begin[c]; p < chunks.chunk_begin[c + 1]; ++p) {
      const Piece& piece = chunks.pieces[p];
      dispatch_dtype(runs.runs[piece.run].dtype, [&](auto tag) {
        update_piece<typename decltype(tag)::type>(runs, piece, which, weights, count);
      });
    }
  }
}

}  // namespace FOMO_ISA
}  // namespace cpu
}  // namespace fomo
