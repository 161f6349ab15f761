// CUDA twin of the dense evaluation (csrc/cpu/evaluate_candidates.cpp): kernels + launcher.
//
// One block per (candidate, tile of 32 validation samples): the 32 samples are the lanes of a warp,
// activations are feature-major [features, 32] in global scratch (coalesced), each warp computes
// output units o = warp, warp + 8, ... as bias + sum_k W(o, k) h[k] in input order (the weight read
// is a broadcast across the warp). The candidates of one tile are neighbouring blocks, so they read
// the same X tile from L2. The last layer feeds the per-sample loss (the element maths of
// fomo/dense.h, shared with the CPU) and the fixed block reduction gives per-(tile, candidate)
// float64 partial sums; a second kernel adds them in tile order into the caller's device vectors.
// Deterministic: no atomics. Everything is queued on the call's stream; nothing waits for it.
#include <type_traits>

#include "cuda/common.cuh"
#include "fomo/dense.h"
#include "fomo/dispatch.h"

namespace fomo {
namespace cuda {
namespace {

constexpr int kTile = 32;                 // samples per block: one per lane
constexpr int kWarps = kThreads / kTile;  // warps per block, each computing every kWarps-th unit
// Scratch for the activations of all blocks of one launch; larger validation sets run in chunks.
constexpr size_t kScratchBudget = size_t(256) << 20;
constexpr int64_t kMaxTilesPerLaunch = 65535;  // grid y limit

static_assert(kTile <= kDenseMaxTileSamples, "check_dense_sizes() bounds the tile");

// One input feature in the compute type. The input dtype is a run-time switch (uniform across the
// launch) rather than a template parameter: the kernel is instantiated once per parameter dtype, 4
// times instead of 16, which is most of this file's compile time.
template <class C>
__device__ __forceinline__ C load_input(const DenseData& data, int64_t offset) {
  C value = C(0);
  with_dtype(data.dtype, [&](auto* tag) {
    using X = std::remove_pointer_t<decltype(tag)>;
    value = C(Element<X>::load(static_cast<const X*>(data.x) + offset));
  });
  return value;
}

// The loss of sample `lane` from the output layer z [classes, kTile]; *right: whether the
// prediction is the label (classification outputs). Labels are in range (checked by the caller).
template <class C>
__device__ C sample_loss(const DenseNet& net, const DenseData& data, const C* z, int lane, int64_t b, bool* right) {
  const int64_t classes = net.sizes[net.num_layers];
  if (net.output == DenseOutput::squared_error) {
    C total = C(0);
    for (int64_t c = 0; c < classes; ++c) {
      const C diff = z[c * kTile + lane] - C(data.targets[b * classes + c]);
      total += diff * diff;
    }
    *right = false;
    return total / C(classes);
  }
  const int64_t label = data.labels[b];
  if (net.output == DenseOutput::logistic) {
    *right = int64_t(z[lane] > C(0)) == label;
    return binary_logistic_loss(z[lane], label);
  }
  C max = z[lane];
  int64_t arg = 0;
  for (int64_t c = 1; c < classes; ++c) {
    const C v = z[c * kTile + lane];
    if (v > max) {  // the first largest logit wins ties
      max = v;
      arg = c;
    }
  }
  C sum = C(0);
  for (int64_t c = 0; c < classes; ++c) sum += dense_exp(z[c * kTile + lane] - max);
  *right = arg == label;
  return softmax_loss(max, sum, z[label * kTile + lane]);
}

// partials[(t * M + m) * 2 + {0, 1}] = sums over tile t of w * loss and w * [correct]; for m == 0
// also tile_weight[t] = sum of w over the tile. `net`'s arrays and `layers` are device memory.
template <class T>
__global__ void __launch_bounds__(kThreads)
    dense_forward(DenseNet net, const DenseLayerParams* layers, int64_t num_candidates, DenseData data,
                  int64_t tile_offset, int64_t widest, typename Element<T>::compute* scratch, double* partials,
                  double* tile_weight) {
  using C = typename Element<T>::compute;
  const int64_t m = blockIdx.x;
  const int64_t t = tile_offset + blockIdx.y;
  const int lane = threadIdx.x % kTile, warp = threadIdx.x / kTile;
  const int64_t b0 = t * kTile;
  const int64_t rows = data.rows - b0 < kTile ? data.rows - b0 : kTile;
  C* buffers[2];
  buffers[0] = scratch + (int64_t(blockIdx.y) * num_candidates + m) * 2 * widest * kTile;
  buffers[1] = buffers[0] + widest * kTile;

  const int64_t inputs = net.sizes[0];
  for (int64_t d = warp; d < inputs; d += kWarps)
    buffers[0][d * kTile + lane] =
        lane < rows ? load_input<C>(data, (b0 + lane) * data.row_stride + d * data.col_stride) : C(0);
  __syncthreads();

  const DenseLayerParams* params = layers + m * net.num_layers;
  int current = 0;
  for (int64_t l = 0; l < net.num_layers; ++l) {
    const DenseLayerParams p = params[l];
    const T* w = static_cast<const T*>(p.weight);
    const T* bias = static_cast<const T*>(p.bias);
    const C* in = buffers[current];
    C* out = buffers[1 - current];
    const int64_t n_in = net.sizes[l], n_out = net.sizes[l + 1];
    const Activation act = l + 1 < net.num_layers ? net.activations[l] : Activation::identity;
    for (int64_t o = warp; o < n_out; o += kWarps) {
      C acc = Element<T>::load(bias + o * p.bias_stride);
      const T* wo = w + o * p.row_stride;
      for (int64_t k = 0; k < n_in; ++k) acc += Element<T>::load(wo + k * p.col_stride) * in[k * kTile + lane];
      out[o * kTile + lane] = dense_activate(act, acc);
    }
    current = 1 - current;
    __syncthreads();
  }

  // Warp 0 holds the tile's samples; the other warps add zeros to the fixed-order block sums.
  double loss = 0.0, correct = 0.0, weight = 0.0;
  if (warp == 0 && lane < rows) {
    const int64_t b = b0 + lane;
    weight = data.sample_weight ? data.sample_weight[b] : 1.0;
    bool right = false;
    const C value = sample_loss(net, data, buffers[current], lane, b, &right);
    loss = weight * double(value);
    correct = (right && value == value) ? weight : 0.0;  // a NaN loss counts as wrong
  }
  loss = block_sum(loss);
  correct = block_sum(correct);
  weight = block_sum(weight);
  if (threadIdx.x == 0) {
    partials[(t * num_candidates + m) * 2] = loss;
    partials[(t * num_candidates + m) * 2 + 1] = correct;
    if (m == 0) tile_weight[t] = weight;
  }
}

__global__ void dense_reduce(const double* partials, const double* tile_weight, int64_t tiles, int64_t num_candidates,
                             bool regression, double* loss, double* accuracy) {
  const int64_t m = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (m >= num_candidates) return;
  double l = 0.0, c = 0.0, w = 0.0;
  for (int64_t t = 0; t < tiles; ++t) {
    l += partials[(t * num_candidates + m) * 2];
    c += partials[(t * num_candidates + m) * 2 + 1];
    w += tile_weight[t];
  }
  loss[m] = l / w;
  accuracy[m] = regression ? NAN : c / w;
}

template <class T>
void launch(const DenseNet& net, const DenseCandidates& cands, const DenseData& data, DenseResult result,
            DeviceStream where) {
  using C = typename Element<T>::compute;
  const int64_t m = cands.count, layers = net.num_layers;
  const int64_t tiles = (data.rows + kTile - 1) / kTile;
  int64_t widest = 0;
  for (int64_t l = 0; l <= layers; ++l) widest = net.sizes[l] > widest ? net.sizes[l] : widest;
  const size_t per_block = size_t(2 * widest * kTile) * sizeof(C);
  int64_t chunk = int64_t(kScratchBudget / (per_block * size_t(m)));
  chunk = chunk < 1 ? 1 : chunk > tiles ? tiles : chunk;
  chunk = chunk > kMaxTilesPerLaunch ? kMaxTilesPerLaunch : chunk;
  check_grid(m, "the dense evaluation");

  // The network's shape and the layer table travel in one copy; partials and activations need no
  // host image.
  Staging staging(where);
  const size_t sizes_at = staging.add(net.sizes, layers + 1);
  const size_t activations_at = staging.add(net.activations, layers - 1);
  const size_t table_at = staging.add(cands.layers, m * layers);
  staging.upload();
  const size_t partial_bytes = sizeof(double) * size_t(tiles * m * 2 + tiles);
  DeviceBuffer scratch(where, partial_bytes + per_block * size_t(chunk * m));
  double* partials = scratch.as<double>();
  double* tile_weight = partials + tiles * m * 2;
  C* activations = scratch.as<C>(partial_bytes);  // partial_bytes is a multiple of 8

  const DenseNet device_net{layers, staging.device<const int64_t>(sizes_at),
                            staging.device<const Activation>(activations_at), net.output};
  const cudaStream_t stream = as_stream(where.stream);
  for (int64_t t0 = 0; t0 < tiles; t0 += chunk) {
    const int64_t count = tiles - t0 < chunk ? tiles - t0 : chunk;
    dense_forward<T><<<dim3(unsigned(m), unsigned(count)), kThreads, 0, stream>>>(
        device_net, staging.device<const DenseLayerParams>(table_at), m, data, t0, widest, activations, partials,
        tile_weight);
    check_launch("the dense evaluation kernel launch");
  }
  dense_reduce<<<unsigned((m + 127) / 128), 128, 0, stream>>>(
      partials, tile_weight, tiles, m, net.output == DenseOutput::squared_error, result.loss, result.accuracy);
  check_launch("the dense evaluation final pass launch");
}

}  // namespace

void evaluate_candidates(const DenseNet& net, const DenseCandidates& candidates, const DenseData& data,
                         DenseResult result, DeviceStream where) {
  if (candidates.count == 0) return;  // nothing to launch
  DeviceGuard guard(where.device);
  dispatch_dtype(candidates.dtype,
                 [&](auto tag) { launch<typename decltype(tag)::type>(net, candidates, data, result, where); });
}

}  // namespace cuda
}  // namespace fomo
