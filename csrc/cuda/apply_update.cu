// apply_update on the GPU: out = x + sum_k w_k (c_k - x) over the candidates with a nonzero weight,
// each read once; one block per piece, 16-byte loads and stores where the run allows. The
// arithmetic is the CPU's: float accumulation for 32- and 16-bit storage, double for float64.
#include <type_traits>

#include "cuda/passes.cuh"
#include "fomo/select.h"

namespace fomo {
namespace cuda {
namespace {

template <class T>
__device__ __forceinline__ const T* candidate_at(const DeviceRuns& t, const Piece& p, int64_t candidate,
                                                 int64_t* stride) {
  const int64_t slot = p.run * t.num_candidates + candidate;
  *stride = t.candidate_stride[slot];
  return static_cast<const T*>(t.candidate[slot]) + p.begin * *stride;
}

template <class T>
__device__ void update_piece(const DeviceRuns& t, const Piece& p, const int64_t* which, const double* weights,
                             int64_t count) {
  using E = Element<T>;
  using C = typename E::compute;
  const Run& run = t.runs[p.run];
  const int64_t sx = run.local_stride, so = run.out_stride;
  const T* x = static_cast<const T*>(run.local) + p.begin * sx;
  T* out = static_cast<T*>(run.out) + p.begin * so;
  if (count == 0) {
    // No candidate moves the model: out takes local's bit patterns (signed zeros, NaN payloads).
    if (x == out && sx == so) return;
    for (int64_t j = threadIdx.x; j < p.count; j += kThreads) out[j * so] = x[j * sx];
    return;
  }
  int64_t scalar_from = 0;
  if (t.vector_ok[p.run]) {
    constexpr int L = kVectorLanes<T>;
    const int64_t vectors = p.count / L;
    for (int64_t v = threadIdx.x; v < vectors; v += kThreads) {
      const Vector<T> xv = load_vector(x + v * L);
      C acc[L] = {};
      for (int64_t k = 0; k < count; ++k) {
        int64_t sc;
        const Vector<T> cv = load_vector(candidate_at<T>(t, p, which[k], &sc) + v * L);
        const C w = C(weights[k]);
#pragma unroll
        for (int i = 0; i < L; ++i) acc[i] += w * (cv.v[i] - xv.v[i]);
      }
      Vector<T> result;
#pragma unroll
      for (int i = 0; i < L; ++i) result.v[i] = xv.v[i] + acc[i];
      store_vector(out + v * L, result);
    }
    scalar_from = vectors * L;
  }
  for (int64_t j = scalar_from + threadIdx.x; j < p.count; j += kThreads) {
    const C xj = E::load(x + j * sx);
    C acc = C(0);
    for (int64_t k = 0; k < count; ++k) {
      int64_t sc;
      const T* c = candidate_at<T>(t, p, which[k], &sc);
      acc += C(weights[k]) * (E::load(c + j * sc) - xj);
    }
    E::store(out + j * so, xj + acc);
  }
}

__global__ void __launch_bounds__(kThreads)
    weighted_update(DeviceRuns t, const int64_t* which, const double* weights, const int64_t* count) {
  const Piece p = t.pieces[blockIdx.x];
  const int64_t n = *count;
  with_dtype(t.runs[p.run].dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    update_piece<T>(t, p, which, weights, n);
  });
}

}  // namespace

void queue_update(const DeviceRuns& runs, const int64_t* which, const double* weights, const int64_t* count,
                  cudaStream_t stream) {
  if (runs.num_pieces == 0) return;
  check_grid(runs.num_pieces, "the update kernel");
  weighted_update<<<unsigned(runs.num_pieces), kThreads, 0, stream>>>(runs, which, weights, count);
  check_launch("the update kernel launch");
}

void apply_update(const ModelRuns& runs, const double* weights, DeviceStream where) {
  if (runs.total_elements == 0) return;
  const NonzeroWeights nonzero = nonzero_weights(weights, runs.num_candidates);
  const int64_t count = nonzero.count();
  DeviceGuard guard(where.device);
  Staging staging(where);
  const StagedRuns staged(staging, runs);
  const size_t which_at = staging.add(nonzero.which.data(), count);
  const size_t weights_at = staging.add(nonzero.weights.data(), count);
  const size_t count_at = staging.add(&count, 1);
  staging.upload();
  queue_update(staged.device(staging), staging.device<const int64_t>(which_at),
               staging.device<const double>(weights_at), staging.device<const int64_t>(count_at),
               as_stream(where.stream));
}

}  // namespace cuda
}  // namespace fomo
