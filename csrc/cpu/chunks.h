// The fixed chunk partition of a call's runs that every CPU pass works over (host side; the kernels
// see it as a ChunkTable, kernels.h). Its chunk size, kChunkElements (fomo/ops.h), never depends on
// the thread count: the partition is what fixes every summation order.
#pragma once

#include <cstdint>
#include <vector>

#include "cpu/kernels.h"

namespace fomo {
namespace cpu {

struct Chunks {
  std::vector<Piece> pieces;
  std::vector<int64_t> begin{0};
  ChunkTable table() const { return {pieces.data(), begin.data(), int64_t(begin.size()) - 1}; }
};

// Cuts the runs, in order, into chunks of kChunkElements (the last one shorter); a chunk may hold
// pieces of several small runs and a long run spans several chunks.
Chunks make_chunks(const ModelRuns& runs);

}  // namespace cpu
}  // namespace fomo
