// The CPU distance op: the candidates asked for, measured over the fixed chunk partition.
#include <vector>

#include "cpu/passes.h"
#include "fomo/math.h"
#include "fomo/select.h"

namespace fomo {
namespace cpu {

void distance_pass(const ModelRuns& runs, const Chunks& chunks, Norm norm, const std::vector<int64_t>& which,
                   double* dist) {
  if (which.empty()) return;
  const ChunkTable table = chunks.table();
  const int64_t count = int64_t(which.size());
  std::vector<double> partials(size_t(table.num_chunks * count));
  kernels().distance_partials(runs, table, norm, which.data(), count, partials.data());
  for (int64_t k = 0; k < count; ++k) {
    double sum = 0.0;
    for (int64_t c = 0; c < table.num_chunks; ++c) sum += partials[size_t(c * count + k)];
    dist[which[k]] = finish_distance(norm, sum);
  }
}

void candidate_distances(const ModelRuns& runs, Norm norm, const uint8_t* measure, double* dist) {
  distance_pass(runs, make_chunks(runs), norm, marked_candidates(measure, runs.num_candidates), dist);
}

}  // namespace cpu
}  // namespace fomo
