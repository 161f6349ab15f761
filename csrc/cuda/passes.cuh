// The two passes over memory that the CUDA ops queue, shared by candidate_distances.cu,
// apply_update.cu and fomo_step.cu (defined in the first two). CUDA-only.
#pragma once

#include "cuda/common.cuh"

namespace fomo {
namespace cuda {

// Distance pass, two fixed stages (no float atomics, so bitwise reproducible): every block sums
// one piece for one candidate into partials[piece * count + k], then one block per candidate adds
// its partials in piece order: out[scatter ? scatter[k] : k] = distance of candidate which[k].
// `partials` holds runs.num_pieces * count doubles; which/scatter are device arrays.
void queue_distances(const DeviceRuns& runs, Norm norm, const int64_t* which, int64_t count, double* partials,
                     double* out, const int64_t* scatter, cudaStream_t stream);

// Update pass: out = local + sum over k < *count of weights[k] * (candidate which[k] - local), one
// read of each candidate with a nonzero weight; *count == 0 copies local's bits. `count`, which and
// weights live on the device, so the fused step never needs the host to know them.
void queue_update(const DeviceRuns& runs, const int64_t* which, const double* weights, const int64_t* count,
                  cudaStream_t stream);

}  // namespace cuda
}  // namespace fomo
