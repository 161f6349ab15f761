// CUDA twin of the dense evaluation (csrc/cpu/evaluate_dense.cpp): kernel + launcher.
//
// One block per (tile of 32 validation samples, candidate): the 32 samples are the lanes of a warp,
// activations are feature-major [features, 32] in global scratch (coalesced), each warp computes
// output units o = warp, warp + 8, ... as bias + sum_k W(o, k) h[k] in input order (the weight read
// is a broadcast across the warp). The blocks of one tile read the same X tile, so the first layer
// of all candidates is the wide product X_tile [W_1 | ... | W_M] served from L2. The last layer
// feeds the per-sample loss (the element maths of fomo/dense.h, shared with the CPU) and a fixed
// shuffle-tree reduction gives per-(tile, candidate) float64 partial sums; a second kernel adds
// them in tile order. Deterministic: no atomics.
#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "fomo/check.h"
#include "fomo/dense.h"
#include "fomo/math.h"

namespace fomo {
namespace cuda {
namespace {

constexpr int kTile = 32;    // samples per block: one per lane
constexpr int kWarps = 8;    // warps per block
constexpr int kMaxLayers = 64;
// Scratch for the activations of all blocks of one launch; larger validation sets run in chunks.
constexpr size_t kScratchBudget = size_t(256) << 20;

struct NetDevice {
  int64_t num_layers;
  int64_t sizes[kMaxLayers + 1];
  int32_t activations[kMaxLayers];
  int32_t output;
};

__device__ __forceinline__ float load_value(const float* p) { return *p; }
__device__ __forceinline__ double load_value(const double* p) { return *p; }
__device__ __forceinline__ float load_value(const half_t* p) { return half_to_float(p->bits); }
__device__ __forceinline__ float load_value(const bfloat16_t* p) { return bf16_to_float(p->bits); }

// One input feature in the compute type. The input dtype is a run-time switch (uniform across the
// launch) rather than a template parameter: the kernel is instantiated once per parameter dtype, 4
// times instead of 16, which is most of this file's compile time; every case converts exactly as
// a template over the input dtype would.
template <class C>
__device__ __forceinline__ C load_input(const DenseData& data, int64_t offset) {
  switch (data.dtype) {
    case DType::float64: return C(load_value(static_cast<const double*>(data.x) + offset));
    case DType::float16: return C(load_value(static_cast<const half_t*>(data.x) + offset));
    case DType::bfloat16: return C(load_value(static_cast<const bfloat16_t*>(data.x) + offset));
    default: return C(load_value(static_cast<const float*>(data.x) + offset));
  }
}

template <class T>
struct Compute {
  typedef float type;
};
template <>
struct Compute<double> {
  typedef double type;
};

__device__ __forceinline__ double warp_sum(double v) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
  return v;
}

// partials[(t * M + m) * 2 + {0, 1}] = sums over tile t of w * loss and w * [correct]; for m == 0
// also tile_weight[t] = sum of w over the tile.
template <class T>
__global__ void dense_forward(NetDevice net, const DenseLayerParams* layers, int64_t num_candidates, DenseData data,
                              int64_t tile_offset, int64_t widest, typename Compute<T>::type* scratch,
                              double* partials, double* tile_weight) {
  typedef typename Compute<T>::type C;
  const int64_t t = tile_offset + blockIdx.x;
  const int64_t m = blockIdx.y;
  const int lane = threadIdx.x % kTile, warp = threadIdx.x / kTile;
  const int64_t b0 = t * kTile;
  const int64_t rows = data.rows - b0 < kTile ? data.rows - b0 : kTile;
  C* buffers[2];
  buffers[0] = scratch + (int64_t(blockIdx.x) * num_candidates + m) * 2 * widest * kTile;
  buffers[1] = buffers[0] + widest * kTile;

  for (int64_t d = warp; d < net.sizes[0]; d += kWarps)
    buffers[0][d * kTile + lane] = lane < rows ? load_input<C>(data, (b0 + lane) * data.row_stride + d * data.col_stride) : C(0);
  __syncthreads();

  const DenseLayerParams* params = layers + m * net.num_layers;
  int current = 0;
  for (int64_t l = 0; l < net.num_layers; ++l) {
    const DenseLayerParams p = params[l];
    const T* w = static_cast<const T*>(p.weight);
    const T* bias = static_cast<const T*>(p.bias);
    const C* in = buffers[current];
    C* out = buffers[1 - current];
    const Activation act = l + 1 < net.num_layers ? Activation(net.activations[l]) : Activation::identity;
    for (int64_t o = warp; o < net.sizes[l + 1]; o += kWarps) {
      C acc = C(load_value(bias + o * p.bias_stride));
      const T* wo = w + o * p.row_stride;
      for (int64_t k = 0; k < net.sizes[l]; ++k) acc += C(load_value(wo + k * p.col_stride)) * in[k * kTile + lane];
      out[o * kTile + lane] = dense_activate(act, acc);
    }
    current = 1 - current;
    __syncthreads();
  }

  if (warp != 0) return;
  const C* z = buffers[current];
  const int64_t classes = net.sizes[net.num_layers];
  const int64_t b = b0 + lane;
  double loss = 0.0, correct = 0.0, weight = 0.0;
  if (lane < rows) {
    weight = data.sample_weight ? data.sample_weight[b] : 1.0;
    C sample_loss;
    bool right = false;
    if (net.output == int32_t(DenseOutput::squared_error)) {
      C total = C(0);
      for (int64_t c = 0; c < classes; ++c) {
        const C diff = z[c * kTile + lane] - C(data.targets[b * classes + c]);
        total += diff * diff;
      }
      sample_loss = total / C(classes);
    } else {
      const int64_t label = data.labels[b];
      const int64_t limit = net.output == int32_t(DenseOutput::logistic) ? 2 : classes;
      if (label < 0 || label >= limit) {
        sample_loss = C(NAN);
      } else if (net.output == int32_t(DenseOutput::logistic)) {
        sample_loss = binary_logistic_loss(z[lane], label);
        right = int64_t(z[lane] > C(0)) == label;
      } else {
        C max = z[lane];
        int64_t arg = 0;
        for (int64_t c = 1; c < classes; ++c) {
          const C v = z[c * kTile + lane];
          if (v > max) {
            max = v;
            arg = c;
          }
        }
        C sum = C(0);
        for (int64_t c = 0; c < classes; ++c) sum += dense_exp(z[c * kTile + lane] - max);
        sample_loss = softmax_loss(max, sum, z[label * kTile + lane]);
        right = arg == label;
      }
    }
    loss = weight * double(sample_loss);
    correct = (right && sample_loss == sample_loss) ? weight : 0.0;
  }
  loss = warp_sum(loss);
  correct = warp_sum(correct);
  weight = warp_sum(weight);
  if (lane == 0) {
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

void check_cuda(cudaError_t status, const char* what) {
  if (status != cudaSuccess) throw std::runtime_error(std::string("fomo_core CUDA dense evaluation: ") + what + ": " +
                                                      cudaGetErrorString(status));
}

// Device buffer freed on scope exit (also when a later step throws).
struct DeviceBuffer {
  void* ptr = nullptr;
  explicit DeviceBuffer(size_t bytes) { check_cuda(cudaMalloc(&ptr, bytes ? bytes : 1), "cudaMalloc"); }
  ~DeviceBuffer() { cudaFree(ptr); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
};

template <class T>
void launch(const NetDevice& net, const DenseCandidates& cands, const DenseData& data, DenseResult result,
            cudaStream_t stream) {
  typedef typename Compute<T>::type C;
  const int64_t m = cands.count, layers = net.num_layers;
  const int64_t tiles = (data.rows + kTile - 1) / kTile;
  int64_t widest = 0;
  for (int64_t l = 0; l <= layers; ++l) widest = net.sizes[l] > widest ? net.sizes[l] : widest;
  const size_t per_block = size_t(2 * widest * kTile) * sizeof(C);
  int64_t chunk = int64_t(kScratchBudget / (per_block * size_t(m)));
  chunk = chunk < 1 ? 1 : chunk > tiles ? tiles : chunk;
  if (chunk > 65535) chunk = 65535;  // grid x limit is larger, but keep launches moderate

  DeviceBuffer table(sizeof(DenseLayerParams) * size_t(m * layers));
  DeviceBuffer scratch(per_block * size_t(chunk * m));
  DeviceBuffer partials(sizeof(double) * size_t(tiles * m * 2));
  DeviceBuffer weights(sizeof(double) * size_t(tiles));
  DeviceBuffer out(sizeof(double) * size_t(2 * m));
  check_cuda(cudaMemcpyAsync(table.ptr, cands.layers, sizeof(DenseLayerParams) * size_t(m * layers),
                             cudaMemcpyHostToDevice, stream),
             "copy of the layer table");
  for (int64_t t0 = 0; t0 < tiles; t0 += chunk) {
    const int64_t count = tiles - t0 < chunk ? tiles - t0 : chunk;
    dense_forward<T><<<dim3(unsigned(count), unsigned(m)), kTile * kWarps, 0, stream>>>(
        net, static_cast<const DenseLayerParams*>(table.ptr), m, data, t0, widest, static_cast<C*>(scratch.ptr),
        static_cast<double*>(partials.ptr), static_cast<double*>(weights.ptr));
    check_cuda(cudaGetLastError(), "dense_forward launch");
  }
  double* loss = static_cast<double*>(out.ptr);
  dense_reduce<<<unsigned((m + 127) / 128), 128, 0, stream>>>(
      static_cast<const double*>(partials.ptr), static_cast<const double*>(weights.ptr), tiles, m,
      net.output == int32_t(DenseOutput::squared_error), loss, loss + m);
  check_cuda(cudaGetLastError(), "dense_reduce launch");
  check_cuda(cudaMemcpyAsync(result.loss, loss, sizeof(double) * size_t(m), cudaMemcpyDeviceToHost, stream),
             "copy of the losses");
  check_cuda(cudaMemcpyAsync(result.accuracy, loss + m, sizeof(double) * size_t(m), cudaMemcpyDeviceToHost, stream),
             "copy of the accuracies");
  check_cuda(cudaStreamSynchronize(stream), "synchronise");
}

// Makes `device` current for the scope and restores the caller's device.
struct CurrentDevice {
  int previous = -1;
  explicit CurrentDevice(int device) {
    check_cuda(cudaGetDevice(&previous), "cudaGetDevice");
    if (previous != device) check_cuda(cudaSetDevice(device), "cudaSetDevice");
  }
  ~CurrentDevice() {
    int now = -1;
    if (cudaGetDevice(&now) == cudaSuccess && now != previous) cudaSetDevice(previous);
  }
};

}  // namespace

void evaluate_dense(const DenseNet& net, const DenseCandidates& candidates, const DenseData& data, DenseResult result,
                    int device, void* stream) {
  if (candidates.count == 0 || data.rows == 0) return;  // nothing to launch
  if (net.num_layers < 1 || net.num_layers > kMaxLayers)
    fail_value("the CUDA dense evaluation supports 1 to ", kMaxLayers, " layers, got ", net.num_layers);
  NetDevice dev{};
  dev.num_layers = net.num_layers;
  for (int64_t l = 0; l <= net.num_layers; ++l) dev.sizes[l] = net.sizes[l];
  for (int64_t l = 0; l + 1 < net.num_layers; ++l) dev.activations[l] = int32_t(net.activations[l]);
  dev.output = int32_t(net.output);
  const CurrentDevice current(device);
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  switch (candidates.dtype) {
    case DType::float32: return launch<float>(dev, candidates, data, result, s);
    case DType::float64: return launch<double>(dev, candidates, data, result, s);
    case DType::float16: return launch<half_t>(dev, candidates, data, result, s);
    case DType::bfloat16: return launch<bfloat16_t>(dev, candidates, data, result, s);
  }
}

}  // namespace cuda
}  // namespace fomo
