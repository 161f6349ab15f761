// The fused CPU step: distances of the candidates that need measuring, scores and weights (math.h),
// then the update, over one chunk partition.
#include <cmath>
#include <vector>

#include "cpu/passes.h"
#include "fomo/math.h"

namespace fomo {
namespace cpu {

void fomo_step(const ModelRuns& runs, const StepOptions& options, double local_loss, const double* candidate_losses,
               StepResult result) {
  const int64_t m = runs.num_candidates;
  const Chunks chunks = make_chunks(runs);
  std::vector<int64_t> which;
  for (int64_t n = 0; n < m; ++n) {
    result.distances[n] = NAN;
    if (needs_distance(options.all_scores, local_loss, candidate_losses[n])) which.push_back(n);
  }
  distance_pass(runs, chunks, options.norm, which, result.distances);
  std::vector<uint8_t> measured(size_t(m), 0);
  for (int64_t n : which) measured[size_t(n)] = 1;
  for (int64_t n = 0; n < m; ++n)
    result.scores[n] = first_order_score(local_loss, candidate_losses[n], result.distances[n], options.eps,
                                         options.max_distance, measured[size_t(n)] != 0, &result.status[n]);
  normalise_weights(result.scores, result.status, m, result.weights);
  if (options.update) update_pass(runs, chunks, result.weights);
}

}  // namespace cpu
}  // namespace fomo
