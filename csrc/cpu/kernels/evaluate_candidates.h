// The dense-evaluation kernel of one work item (a tile of validation samples x a block of
// candidates), compiled per instruction set (kernels/evaluate_candidates.cpp) and driven by
// cpu/evaluate_candidates.cpp, which owns the plan: tiles, candidate blocks, scratch and threads.
#pragma once

#include <cstdint>

#include "fomo/dense.h"

namespace fomo {
namespace cpu {

// Samples [row_begin, row_begin + rows) and candidates [cand_begin, cand_end). Activations are kept
// feature-major, [features, ldh] with the samples contiguous; ldh >= rows is the padded tile width
// (a multiple of kDensePanelMultiple), the padding columns are computed on zeros and ignored.
struct DenseItem {
  int64_t row_begin;
  int64_t rows;
  int64_t ldh;
  int64_t cand_begin;
  int64_t cand_end;
};

constexpr int64_t kDensePanelMultiple = 16;

// Byte offsets inside one thread's scratch: X^T tile [D, ldh], the first layer of the candidate
// block [G * H1, ldh], two buffers [Hmax, ldh] for the later layers, and per-sample softmax state.
struct DenseScratchLayout {
  int64_t x, first, ping, pong, max, sum, arg, total;
};

static inline int64_t dense_align(int64_t bytes) { return (bytes + 63) / 64 * 64; }

static inline DenseScratchLayout dense_scratch_layout(const DenseNet& net, int64_t group, int64_t ldh,
                                                      int64_t compute_bytes) {
  int64_t widest_later = 0;
  for (int64_t l = 2; l <= net.num_layers; ++l)
    if (net.sizes[l] > widest_later) widest_later = net.sizes[l];
  DenseScratchLayout s;
  int64_t at = 0;
  s.x = at;
  at += dense_align(net.sizes[0] * ldh * compute_bytes);
  s.first = at;
  at += dense_align(group * net.sizes[1] * ldh * compute_bytes);
  s.ping = at;
  at += dense_align(widest_later * ldh * compute_bytes);
  s.pong = at;
  at += dense_align(widest_later * ldh * compute_bytes);
  s.max = at;
  at += dense_align(ldh * compute_bytes);
  s.sum = at;
  at += dense_align(ldh * compute_bytes);
  s.arg = at;
  at += dense_align(ldh * 4);
  s.total = at;
  return s;
}

// loss_sums[m - cand_begin] and correct_sums[m - cand_begin] receive, for each candidate of the
// block, the float64 sums over the tile (in sample order) of w_b * loss_b and w_b * [correct_b].
#define FOMO_DECLARE_DENSE_KERNEL(isa)                                                            \
  namespace isa {                                                                                 \
  void dense_item(const DenseNet& net, const DenseCandidates& candidates, const DenseData& data,  \
                  const DenseItem& item, void* scratch, double* loss_sums, double* correct_sums); \
  }
FOMO_DECLARE_DENSE_KERNEL(base)
FOMO_DECLARE_DENSE_KERNEL(avx2)
#undef FOMO_DECLARE_DENSE_KERNEL

}  // namespace cpu
}  // namespace fomo
