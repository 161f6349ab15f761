// The CPU ops: the fixed chunk partition, then distances, scores and weights (math.h), and the
// update, each a pass of the kernels chosen for this machine.
#include <cmath>
#include <vector>

#include "cpu/kernels.h"
#include "fomo/math.h"

namespace fomo {
namespace cpu {
namespace {

// Fixed size, never derived from the thread count: the partition is what fixes the summation order.
constexpr int64_t kChunkElements = 16384;

struct Chunks {
  std::vector<Piece> pieces;
  std::vector<int64_t> begin{0};
  ChunkTable table() const { return {pieces.data(), begin.data(), int64_t(begin.size()) - 1}; }
};

// Cuts the runs, in order, into chunks of kChunkElements (the last one shorter); a chunk may hold
// pieces of several small runs and a long run spans several chunks.
Chunks make_chunks(const ModelRuns& runs) {
  Chunks chunks;
  int64_t room = kChunkElements;
  for (int64_t r = 0; r < runs.num_runs; ++r) {
    int64_t begin = 0;
    const int64_t length = runs.runs[r].length;
    while (begin < length) {
      const int64_t count = length - begin < room ? length - begin : room;
      chunks.pieces.push_back({r, begin, count});
      begin += count;
      room -= count;
      if (room == 0) {
        chunks.begin.push_back(int64_t(chunks.pieces.size()));
        room = kChunkElements;
      }
    }
  }
  if (int64_t(chunks.pieces.size()) != chunks.begin.back()) chunks.begin.push_back(int64_t(chunks.pieces.size()));
  return chunks;
}

void measure(const ModelRuns& runs, const Chunks& chunks, Norm norm, const std::vector<int64_t>& which,
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

void update(const ModelRuns& runs, const Chunks& chunks, const double* weights) {
  std::vector<int64_t> which;
  std::vector<double> nonzero;
  for (int64_t m = 0; m < runs.num_candidates; ++m) {
    if (weights[m] != 0.0) {
      which.push_back(m);
      nonzero.push_back(weights[m]);
    }
  }
  kernels().weighted_update(runs, chunks.table(), which.data(), nonzero.data(), int64_t(which.size()));
}

}  // namespace

void candidate_distances(const ModelRuns& runs, Norm norm, const uint8_t* measure_mask, double* dist) {
  std::vector<int64_t> which;
  for (int64_t m = 0; m < runs.num_candidates; ++m)
    if (measure_mask[m]) which.push_back(m);
  measure(runs, make_chunks(runs), norm, which, dist);
}

void apply_update(const ModelRuns& runs, const double* weights) { update(runs, make_chunks(runs), weights); }

void fomo_step(const ModelRuns& runs, const StepOptions& options, double local_loss,
               const double* candidate_losses, StepResult result) {
  const int64_t m = runs.num_candidates;
  const Chunks chunks = make_chunks(runs);
  std::vector<int64_t> which;
  for (int64_t n = 0; n < m; ++n) {
    result.distances[n] = NAN;
    if (needs_distance(options.all_scores, local_loss, candidate_losses[n])) which.push_back(n);
  }
  measure(runs, chunks, options.norm, which, result.distances);
  std::vector<uint8_t> measured(size_t(m), 0);
  for (int64_t n : which) measured[size_t(n)] = 1;
  for (int64_t n = 0; n < m; ++n)
    result.scores[n] = first_order_score(local_loss, candidate_losses[n], result.distances[n], options.eps,
                                         options.max_distance, measured[size_t(n)] != 0, &result.status[n]);
  normalise_weights(result.scores, result.status, m, result.weights);
  if (options.update) update(runs, chunks, result.weights);
}

}  // namespace cpu
}  // namespace fomo
