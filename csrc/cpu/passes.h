// The two passes over memory that the CPU ops run, shared by candidate_distances.cpp,
// apply_update.cpp and fomo_step.cpp (the CPU twin of csrc/cuda/passes.cuh). Host side: each pass
// calls the kernel set chosen for this machine (isa.cpp) over a fixed chunk partition.
#pragma once

#include <cstdint>
#include <vector>

#include "cpu/chunks.h"

namespace fomo {
namespace cpu {

// dist[which[k]] = distance of candidate which[k]: per chunk a float64 partial sum, then the
// partials added in chunk order (candidate_distances.cpp).
void distance_pass(const ModelRuns& runs, const Chunks& chunks, Norm norm, const std::vector<int64_t>& which,
                   double* dist);

// out = local + sum over m of weights[m] * (c_m - local), reading only the candidates with a nonzero
// weight; with none, out receives local's bits (apply_update.cpp).
void update_pass(const ModelRuns& runs, const Chunks& chunks, const double* weights);

}  // namespace cpu
}  // namespace fomo
