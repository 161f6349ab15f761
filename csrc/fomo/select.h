// Which candidates an op reads, chosen on the host before any pass (shared by the CPU and CUDA
// entry points, so both devices read exactly the same candidates).
#pragma once

#include <cstdint>
#include <vector>

namespace fomo {

// The candidates m < num_candidates with mask[m] != 0, in index order.
inline std::vector<int64_t> marked_candidates(const uint8_t* mask, int64_t num_candidates) {
  std::vector<int64_t> which;
  for (int64_t m = 0; m < num_candidates; ++m)
    if (mask[m]) which.push_back(m);
  return which;
}

// The candidates with a nonzero weight and their weights, in index order: the only candidates an
// update reads.
struct NonzeroWeights {
  std::vector<int64_t> which;
  std::vector<double> weights;
  int64_t count() const { return int64_t(which.size()); }
};

inline NonzeroWeights nonzero_weights(const double* weights, int64_t num_candidates) {
  NonzeroWeights nonzero;
  for (int64_t m = 0; m < num_candidates; ++m) {
    if (weights[m] != 0.0) {
      nonzero.which.push_back(m);
      nonzero.weights.push_back(weights[m]);
    }
  }
  return nonzero;
}

}  // namespace fomo
