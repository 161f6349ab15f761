// The CPU kernels proper (csrc/cpu/kernels/*.cpp), compiled once per instruction set (namespaces
// base and avx2) and chosen at run time by isa.cpp. They work chunk by chunk over a fixed partition
// of the runs (made by chunks.h), which is what makes every result independent of the thread count.
#pragma once

#include <cstdint>

#include "fomo/ops.h"

namespace fomo {
namespace cpu {

// Chunk c is pieces[chunk_begin[c] .. chunk_begin[c + 1]) (Piece: fomo/ops.h).
struct ChunkTable {
  const Piece* pieces;
  const int64_t* chunk_begin;  // [num_chunks + 1]
  int64_t num_chunks;
};

struct KernelSet {
  // partials[c * count + k] = sum over chunk c of the distance terms of candidate which[k]
  void (*distance_partials)(const ModelRuns& runs, const ChunkTable& chunks, Norm norm, const int64_t* which,
                            int64_t count, double* partials);
  // out = local + sum_k weights[k] * (candidate which[k] - local); count == 0 copies local's bits
  void (*weighted_update)(const ModelRuns& runs, const ChunkTable& chunks, const int64_t* which, const double* weights,
                          int64_t count);
};

#define FOMO_DECLARE_KERNEL_SET(isa)                                                                   \
  namespace isa {                                                                                      \
  void distance_partials(const ModelRuns&, const ChunkTable&, Norm, const int64_t*, int64_t, double*); \
  void weighted_update(const ModelRuns&, const ChunkTable&, const int64_t*, const double*, int64_t);   \
  }
FOMO_DECLARE_KERNEL_SET(base)
FOMO_DECLARE_KERNEL_SET(avx2)
#undef FOMO_DECLARE_KERNEL_SET

// A second thread only pays off past about this many element-candidate pairs (measured on 2 cores:
// below it the data sit in L3 and one thread is as fast; at twice it two threads are 2x faster).
constexpr int64_t kParallelThreshold = int64_t(1) << 21;

// The kernel set for this machine (isa.cpp).
const KernelSet& kernels();

}  // namespace cpu
}  // namespace fomo
