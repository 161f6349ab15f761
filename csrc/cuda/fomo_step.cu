// fomo_step on the GPU (the fused FedFomo step), with no host round-trip: the distance pass, one tiny kernel
// for the scores and weights (math.h's first_order_score and normalise_weights, the code the CPU
// runs), then the update pass over the candidates that kernel found to have a nonzero weight.
#include <cmath>

#include "cuda/passes.cuh"

namespace fomo {
namespace cuda {
namespace {

// One thread: M is small, and normalise_weights must sum in index order anyway.
__global__ void score_and_weigh(int64_t m, double local_loss, const double* losses, const double* measured,
                                const int64_t* slot_of, double eps, double max_distance, StepResult result,
                                int64_t* update_which, double* update_weights, int64_t* update_count) {
  if (blockIdx.x != 0 || threadIdx.x != 0) return;
  for (int64_t n = 0; n < m; ++n) {
    const bool was_measured = slot_of[n] >= 0;
    const double distance = was_measured ? measured[slot_of[n]] : NAN;
    result.distances[n] = distance;
    result.scores[n] =
        first_order_score(local_loss, losses[n], distance, eps, max_distance, was_measured, &result.status[n]);
  }
  normalise_weights(result.scores, result.status, m, result.weights);
  int64_t count = 0;
  for (int64_t n = 0; n < m; ++n) {
    if (result.weights[n] != 0.0) {
      update_which[count] = n;
      update_weights[count] = result.weights[n];
      ++count;
    }
  }
  *update_count = count;
}

}  // namespace

void fomo_step(const ModelRuns& runs, const StepOptions& options, double local_loss, const double* candidate_losses,
               StepResult result, DeviceStream where) {
  const int64_t m = runs.num_candidates;
  if (m == 0) {
    // No candidate: the update is a copy of local (the CPU's behaviour), nothing else to write.
    if (options.update) {
      const double none = 0.0;
      apply_update(runs, &none, where);
    }
    return;
  }
  std::vector<int64_t> which, slot_of(size_t(m), -1);
  for (int64_t n = 0; n < m; ++n) {
    if (needs_distance(options.all_scores, local_loss, candidate_losses[n])) {
      slot_of[size_t(n)] = int64_t(which.size());
      which.push_back(n);
    }
  }
  const int64_t count = int64_t(which.size());
  DeviceGuard guard(where.device);
  const cudaStream_t stream = as_stream(where.stream);
  Staging staging(where);
  const StagedRuns staged(staging, runs);
  const size_t which_at = staging.add(which.data(), count);
  const size_t slot_at = staging.add(slot_of.data(), m);
  const size_t losses_at = staging.add(candidate_losses, m);
  const size_t partials_at = staging.add<double>(nullptr, staged.num_pieces() * count);
  const size_t measured_at = staging.add<double>(nullptr, count);
  const size_t update_which_at = staging.add<int64_t>(nullptr, m);
  const size_t update_weights_at = staging.add<double>(nullptr, m);
  const size_t update_count_at = staging.add<int64_t>(nullptr, 1);
  staging.upload();

  const DeviceRuns device_runs = staged.device(staging);
  queue_distances(device_runs, options.norm, staging.device<const int64_t>(which_at), count,
                  staging.device<double>(partials_at), staging.device<double>(measured_at), nullptr, stream);
  score_and_weigh<<<1, 1, 0, stream>>>(
      m, local_loss, staging.device<const double>(losses_at), staging.device<const double>(measured_at),
      staging.device<const int64_t>(slot_at), options.eps, options.max_distance, result,
      staging.device<int64_t>(update_which_at), staging.device<double>(update_weights_at),
      staging.device<int64_t>(update_count_at));
  check_launch("the score kernel launch");
  if (options.update)
    queue_update(device_runs, staging.device<const int64_t>(update_which_at),
                 staging.device<const double>(update_weights_at), staging.device<const int64_t>(update_count_at),
                 stream);
}

}  // namespace cuda
}  // namespace fomo
