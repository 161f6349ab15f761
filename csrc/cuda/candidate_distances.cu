// candidate_distances on the GPU: per piece and candidate, the float64 sum of (c - x)^2 or |c - x|
// with 16-byte loads where the run allows, then a fixed-order final pass per candidate. Each term:
// the difference in the compute type (exact for float64 storage, one float32 rounding for 16/32-bit
// storage), then its square or absolute value and every sum in float64. That is the CPU's
// arithmetic for float32 and float64 storage; for 16-bit storage the CPU kernels instead add four
// terms in float32 before widening (csrc/cpu/kernels/candidate_distances.cpp), so CPU and GPU
// distances of 16-bit models agree within rounding, not bit for bit. Sums differ in order anyway
// (per-thread strides within a piece here, lanes within a chunk there).
#include <type_traits>

#include "cuda/passes.cuh"
#include "fomo/select.h"

namespace fomo {
namespace cuda {
namespace {

template <Norm N, class C>
__device__ __forceinline__ double term(C c, C x) {
  return distance_term<N>(double(c - x));
}

template <Norm N, class T>
__device__ double piece_sum(const DeviceRuns& t, const Piece& p, int64_t candidate) {
  using E = Element<T>;
  const Run& run = t.runs[p.run];
  const int64_t slot = p.run * t.num_candidates + candidate;
  const int64_t sx = run.local_stride, sc = t.candidate_stride[slot];
  const T* x = static_cast<const T*>(run.local) + p.begin * sx;
  const T* c = static_cast<const T*>(t.candidate[slot]) + p.begin * sc;
  double sum = 0.0;
  int64_t scalar_from = 0;
  if (t.vector_ok[p.run]) {
    // One accumulator per lane: independent add chains, combined in lane order below.
    constexpr int L = kVectorLanes<T>;
    double lane[L] = {};
    const int64_t vectors = p.count / L;
#pragma unroll 2
    for (int64_t v = threadIdx.x; v < vectors; v += kThreads) {
      const Vector<T> xv = load_vector(x + v * L), cv = load_vector(c + v * L);
#pragma unroll
      for (int i = 0; i < L; ++i) lane[i] += term<N>(cv.v[i], xv.v[i]);
    }
#pragma unroll
    for (int i = 0; i < L; ++i) sum += lane[i];
    scalar_from = vectors * L;
  }
  for (int64_t j = scalar_from + threadIdx.x; j < p.count; j += kThreads)
    sum += term<N>(E::load(c + j * sc), E::load(x + j * sx));
  return sum;
}

// At least 4 resident blocks per SM (at most 64 registers): this pass lives on memory parallelism.
template <Norm N>
__global__ void __launch_bounds__(kThreads, 4)
    distance_partials(DeviceRuns t, const int64_t* which, int64_t count, double* partials) {
  // Candidates vary fastest across blocks, so the blocks reading one piece of the local model
  // run close together and find it in L2.
  const int64_t block = blockIdx.x;
  const Piece p = t.pieces[block / count];
  const int64_t candidate = which[block % count];
  double sum = 0.0;
  with_dtype(t.runs[p.run].dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    sum = piece_sum<N, T>(t, p, candidate);
  });
  sum = block_sum(sum);
  if (threadIdx.x == 0) partials[block] = sum;
}

__global__ void __launch_bounds__(kThreads) finish_distances(const double* partials, int64_t num_pieces, int64_t count,
                                                             Norm norm, double* out, const int64_t* scatter) {
  const int64_t k = blockIdx.x;
  double sum = 0.0;
  for (int64_t p = threadIdx.x; p < num_pieces; p += kThreads) sum += partials[p * count + k];
  sum = block_sum(sum);
  if (threadIdx.x == 0) out[scatter ? scatter[k] : k] = finish_distance(norm, sum);
}

}  // namespace

void queue_distances(const DeviceRuns& runs, Norm norm, const int64_t* which, int64_t count, double* partials,
                     double* out, const int64_t* scatter, cudaStream_t stream) {
  if (count == 0) return;
  const int64_t blocks = runs.num_pieces * count;
  if (blocks > 0) {
    check_grid(blocks, "the distance kernel");
    if (norm == Norm::l2)
      distance_partials<Norm::l2><<<unsigned(blocks), kThreads, 0, stream>>>(runs, which, count, partials);
    else
      distance_partials<Norm::l1><<<unsigned(blocks), kThreads, 0, stream>>>(runs, which, count, partials);
    check_launch("the distance kernel launch");
  }
  check_grid(count, "the distance final pass");
  finish_distances<<<unsigned(count), kThreads, 0, stream>>>(partials, runs.num_pieces, count, norm, out, scatter);
  check_launch("the distance final pass launch");
}

void candidate_distances(const ModelRuns& runs, Norm norm, const uint8_t* measure, double* dist, DeviceStream where) {
  const std::vector<int64_t> which = marked_candidates(measure, runs.num_candidates);
  if (which.empty()) return;
  const int64_t count = int64_t(which.size());
  DeviceGuard guard(where.device);
  Staging staging(where);
  const StagedRuns staged(staging, runs);
  const size_t which_at = staging.add(which.data(), count);
  // Partials are tiny (one double per piece and candidate): staged with the tables.
  const size_t partials_at = staging.add<double>(nullptr, staged.num_pieces() * count);
  staging.upload();
  const int64_t* which_device = staging.device<const int64_t>(which_at);
  queue_distances(staged.device(staging), norm, which_device, count, staging.device<double>(partials_at), dist,
                  which_device, as_stream(where.stream));
}

}  // namespace cuda
}  // namespace fomo
