// The CPU update op: one pass over the candidates with a nonzero weight.
#include "cpu/passes.h"
#include "fomo/select.h"

namespace fomo {
namespace cpu {

void update_pass(const ModelRuns& runs, const Chunks& chunks, const double* weights) {
  const NonzeroWeights nonzero = nonzero_weights(weights, runs.num_candidates);
  kernels().weighted_update(runs, chunks.table(), nonzero.which.data(), nonzero.weights.data(), nonzero.count());
}

void apply_update(const ModelRuns& runs, const double* weights) { update_pass(runs, make_chunks(runs), weights); }

}  // namespace cpu
}  // namespace fomo
