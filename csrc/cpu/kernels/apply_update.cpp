// The kernel of apply_update (compiled once per instruction set; driven by csrc/cpu/apply_update.cpp).
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

constexpr int64_t kBlock =
    4096;  // accumulator block (16 KB in float): L1-resident while candidates stream past in 16 KB bursts

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

constexpr int kGroup = 4;                // candidates folded into the accumulator per pass over a block
constexpr int64_t kPrefetchAhead = 512;  // elements: 16 cache lines of 16-bit candidates

// acc (+)= sum over the group of w_g * (c_g - x) for one block, or, on the last group, out = x + acc
// directly. The candidates are added in index order whatever the grouping, so every element sees
// the same arithmetic as in update_strided.
template <class T, int G, bool kFirst, bool kLast>
void fold_group(const T* xb, const T* const* cb, const compute_t<T>* w, compute_t<T>* acc, T* ob, int64_t m) {
  using C = compute_t<T>;
  using V = vec_t<T>;
  constexpr int L = kLanes<T>;
  int64_t j = 0;
  if constexpr (kHalfWidth<T>) {
    // 16 elements a step through load_pair/store_pair (their order, also in acc): fewer conversion
    // instructions per element for bfloat16, the same arithmetic on every element
    for (; j + 16 <= m; j += 16) {
      f32x8 x0, x1;
      load_pair(xb + j, x0, x1);
      f32x8 a0 = kFirst ? f32x8{} : load_raw<f32x8>(acc + j);
      f32x8 a1 = kFirst ? f32x8{} : load_raw<f32x8>(acc + j + 8);
      for (int g = 0; g < G; ++g) {
        f32x8 c0, c1;
        __builtin_prefetch(cb[g] + j + kPrefetchAhead);
        load_pair(cb[g] + j, c0, c1);
        a0 += w[g] * (c0 - x0);
        a1 += w[g] * (c1 - x1);
      }
      if (kLast) {
        store_pair(ob + j, x0 + a0, x1 + a1);
      } else {
        store_raw(acc + j, a0);
        store_raw(acc + j + 8, a1);
      }
    }
  } else {
    for (; j + L <= m; j += L) {
      const V xv = load_vec(xb + j);
      V a = kFirst ? V{} : load_raw<V>(acc + j);
      for (int g = 0; g < G; ++g) {
        __builtin_prefetch(cb[g] + j + kPrefetchAhead);
        a += w[g] * (load_vec(cb[g] + j) - xv);
      }
      if (kLast)
        store_vec(ob + j, xv + a);
      else
        store_raw(acc + j, a);
    }
  }
  for (; j < m; ++j) {
    const C xj = load_one(xb + j);
    C a = kFirst ? C(0) : acc[j];
    for (int g = 0; g < G; ++g) a += w[g] * (load_one(cb[g] + j) - xj);
    if (kLast)
      store_one(ob + j, xj + a);
    else
      acc[j] = a;
  }
}

template <class T, int G>
void fold(const T* xb, const T* const* cb, const compute_t<T>* w, compute_t<T>* acc, T* ob, int64_t m, bool first,
          bool last) {
  if (first && last)
    fold_group<T, G, true, true>(xb, cb, w, acc, ob, m);
  else if (first)
    fold_group<T, G, true, false>(xb, cb, w, acc, ob, m);
  else if (last)
    fold_group<T, G, false, true>(xb, cb, w, acc, ob, m);
  else
    fold_group<T, G, false, false>(xb, cb, w, acc, ob, m);
}

template <class T>
void update_contiguous(const ModelRuns& runs, const Piece& piece, const T* x, T* out, const int64_t* which,
                       const double* weights, int64_t count) {
  using C = compute_t<T>;
  alignas(32) C acc[kBlock];
  for (int64_t b = 0; b < piece.count; b += kBlock) {
    const int64_t m = piece.count - b < kBlock ? piece.count - b : kBlock;
    for (int64_t k0 = 0; k0 < count; k0 += kGroup) {
      const int group = int(count - k0 < kGroup ? count - k0 : kGroup);
      const T* cb[kGroup];
      C w[kGroup];
      for (int g = 0; g < group; ++g) {
        cb[g] = candidate_piece<T>(runs, piece, which[k0 + g]).data + b;
        w[g] = C(weights[k0 + g]);
      }
      const bool first = k0 == 0, last = k0 + group == count;
      if (group == 4)
        fold<T, 4>(x + b, cb, w, acc, out + b, m, first, last);
      else if (group == 3)
        fold<T, 3>(x + b, cb, w, acc, out + b, m, first, last);
      else if (group == 2)
        fold<T, 2>(x + b, cb, w, acc, out + b, m, first, last);
      else
        fold<T, 1>(x + b, cb, w, acc, out + b, m, first, last);
    }
  }
}

// Any strides: the same arithmetic, element by element, candidates in the same order.
template <class T>
void update_strided(const ModelRuns& runs, const Piece& piece, const T* x, int64_t sx, T* out, int64_t so,
                    const int64_t* which, const double* weights, int64_t count) {
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
void update_piece(const ModelRuns& runs, const Piece& piece, const int64_t* which, const double* weights,
                  int64_t count) {
  const Run& run = runs.runs[piece.run];
  const T* x = static_cast<const T*>(run.local) + piece.begin * run.local_stride;
  T* out = static_cast<T*>(run.out) + piece.begin * run.out_stride;
  if (count == 0) return copy_bits(x, run.local_stride, out, run.out_stride, piece.count);
  bool contiguous = run.local_stride == 1 && run.out_stride == 1;
  for (int64_t k = 0; k < count && contiguous; ++k) contiguous = candidate_piece<T>(runs, piece, which[k]).stride == 1;
  if (contiguous)
    update_contiguous(runs, piece, x, out, which, weights, count);
  else
    update_strided(runs, piece, x, run.local_stride, out, run.out_stride, which, weights, count);
}

}  // namespace

void weighted_update(const ModelRuns& runs, const ChunkTable& chunks, const int64_t* which, const double* weights,
                     int64_t count) {
#pragma omp parallel for schedule(static) if (runs.total_elements * (count + 1) > kParallelThreshold)
  for (int64_t c = 0; c < chunks.num_chunks; ++c) {
    for (int64_t p = chunks.chunk_begin[c]; p < chunks.chunk_begin[c + 1]; ++p) {
      const Piece& piece = chunks.pieces[p];
      dispatch_dtype(runs.runs[piece.run].dtype,
                     [&](auto tag) { update_piece<typename decltype(tag)::type>(runs, piece, which, weights, count); });
    }
  }
}

}  // namespace FOMO_ISA
}  // namespace cpu
}  // namespace fomo
