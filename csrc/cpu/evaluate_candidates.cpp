// Host side of the dense evaluation (evaluate_candidates): the plan (sample tiles, candidate
// blocks, threads, scratch), the OpenMP loop over work items and the reduction to per-candidate
// means. The per-ISA kernel of one work item is csrc/cpu/kernels/evaluate_candidates.cpp.
//
// Determinism: the sample tiles depend on B only, each item writes its own float64 partial sums
// (per tile and candidate), and the partials are added in tile order; the candidate blocks and the
// thread count change which thread computes what, never a sum's order.
#include <cmath>
#include <cstring>
#include <memory>
#include <vector>

#include "cpu/kernels.h"
#include "cpu/kernels/evaluate_candidates.h"
#include "fomo/dense.h"

#if defined(FOMO_HAVE_OPENMP)
#include <omp.h>
#endif

namespace fomo {
namespace cpu {
namespace {

// Samples per tile: enough columns to reuse each weight from registers and L1 many times, few
// enough that a tile's activations stay in L2.
constexpr int64_t kTileTarget = 64;
// Bytes of the first-layer outputs of one candidate block, about half an L2.
constexpr int64_t kFirstLayerBudget = int64_t(512) << 10;
// Below this many multiply-adds a parallel region costs more than it saves.
constexpr double kParallelMacs = double(1 << 20);

typedef void (*DenseItemKernel)(const DenseNet&, const DenseCandidates&, const DenseData&, const DenseItem&, void*,
                                double*, double*);

DenseItemKernel item_kernel() {
#if defined(FOMO_HAVE_ISA_avx2)
  if (std::strcmp(isa_name(), "avx2") == 0) return avx2::dense_item;
#endif
  return base::dense_item;
}

int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

struct Plan {
  int64_t tile = 0, tiles = 0, group = 0, groups = 0, threads = 1;
  int64_t compute_bytes = 4;
  DenseScratchLayout scratch{};
};

Plan make_plan(const DenseNet& net, const DenseCandidates& cands, const DenseData& data) {
  Plan plan;
  plan.compute_bytes = cands.dtype == DType::float64 ? 8 : 4;
  const int64_t tiles = (data.rows + kTileTarget - 1) / kTileTarget;
  plan.tile = round_up((data.rows + tiles - 1) / tiles, kDensePanelMultiple);
  plan.tiles = (data.rows + plan.tile - 1) / plan.tile;
  const int64_t m = cands.count;
  const int64_t per_candidate = net.sizes[1] * plan.tile * plan.compute_bytes;
  plan.group = kFirstLayerBudget / per_candidate;
  plan.group = plan.group < 1 ? 1 : plan.group > m ? m : plan.group;
  double macs = 0.0;
  for (int64_t l = 0; l < net.num_layers; ++l) macs += double(net.sizes[l]) * double(net.sizes[l + 1]);
  macs *= double(m) * double(data.rows);
  const int64_t available = macs < kParallelMacs ? 1 : max_threads();
  // Enough items for every thread: split the candidates further when the tiles alone are too few.
  int64_t groups = (m + plan.group - 1) / plan.group;
  if (plan.tiles * groups < available) {
    groups = (available + plan.tiles - 1) / plan.tiles;
    groups = groups > m ? m : groups;
    plan.group = (m + groups - 1) / groups;
  }
  plan.groups = (m + plan.group - 1) / plan.group;
  const int64_t items = plan.tiles * plan.groups;
  plan.threads = available < items ? available : items;
  plan.scratch = dense_scratch_layout(net, plan.group, plan.tile, plan.compute_bytes);
  return plan;
}

struct AlignedFree {
  void operator()(void* p) const { std::free(p); }
};

}  // namespace

void evaluate_candidates(const DenseNet& net, const DenseCandidates& cands, const DenseData& data, DenseResult result) {
  const int64_t m = cands.count;
  if (m == 0) return;
  const Plan plan = make_plan(net, cands, data);
  std::vector<double> loss_part(size_t(plan.tiles * m)), correct_part(size_t(plan.tiles * m));
  const size_t per_thread = size_t(plan.scratch.total);
  std::unique_ptr<void, AlignedFree> scratch(std::aligned_alloc(64, per_thread * size_t(plan.threads)));
  if (!scratch) throw std::bad_alloc();
  const DenseItemKernel kernel = item_kernel();
  const int64_t items = plan.tiles * plan.groups;

#pragma omp parallel num_threads(int(plan.threads)) if (plan.threads > 1)
  {
#if defined(FOMO_HAVE_OPENMP)
    const int thread = omp_get_thread_num();
#else
    const int thread = 0;
#endif
    void* mine = static_cast<char*>(scratch.get()) + size_t(thread) * per_thread;
#pragma omp for schedule(dynamic, 1)
    for (int64_t i = 0; i < items; ++i) {
      const int64_t t = i / plan.groups, g = i % plan.groups;
      DenseItem item;
      item.row_begin = t * plan.tile;
      item.rows = data.rows - item.row_begin < plan.tile ? data.rows - item.row_begin : plan.tile;
      item.ldh = round_up(item.rows, kDensePanelMultiple);
      item.cand_begin = g * plan.group;
      item.cand_end = item.cand_begin + plan.group < m ? item.cand_begin + plan.group : m;
      kernel(net, cands, data, item, mine, loss_part.data() + t * m + item.cand_begin,
             correct_part.data() + t * m + item.cand_begin);
    }
  }

  double weight_total = double(data.rows);
  if (data.sample_weight) {
    weight_total = 0.0;
    for (int64_t b = 0; b < data.rows; ++b) weight_total += data.sample_weight[b];
  }
  for (int64_t c = 0; c < m; ++c) {
    double loss = 0.0, correct = 0.0;
    for (int64_t t = 0; t < plan.tiles; ++t) {
      loss += loss_part[size_t(t * m + c)];
      correct += correct_part[size_t(t * m + c)];
    }
    result.loss[c] = loss / weight_total;
    result.accuracy[c] = net.output == DenseOutput::squared_error ? NAN : correct / weight_total;
  }
}

}  // namespace cpu
}  // namespace fomo
