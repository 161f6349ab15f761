// What the CUDA op files share: error checks, the device guard, element loads and stores (the
// conversions of fomo/math.h, so the CPU tests cover them), the fixed block reduction, and the run
// table as the kernels see it on the device. CUDA-only: included by csrc/cuda/*.cu alone.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <cstring>
#include <vector>

#include "fomo/math.h"
#include "fomo/ops.h"

namespace fomo {
namespace cuda {

// Threads per block of every kernel. Fixed at compile time: with the fixed piece partition (each
// run cut into pieces of kChunkElements, fomo/ops.h; one block per piece) it fixes every summation
// order, so results do not depend on the GPU.
constexpr int kThreads = 256;

// Throws std::runtime_error "fomo_core CUDA error in <what>: <name>: <string>" unless ok.
void check(cudaError_t status, const char* what);
// After a launch: the launch error, if any (execution errors surface at the next synchronisation).
void check_launch(const char* kernel);
// Blocks one launch may have in x; checked so that a huge model fails clearly instead of wrapping.
void check_grid(int64_t blocks, const char* kernel);

inline cudaStream_t as_stream(void* s) { return static_cast<cudaStream_t>(s); }

// Makes `device` current for the scope and restores the caller's device afterwards.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device);
  ~DeviceGuard();
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = -1;
};

// The run table on the device (the multi-tensor pattern: one pointer table, no concatenation).
struct DeviceRuns {
  const Run* runs;
  const void* const* candidate;     // [num_runs * num_candidates], run-major
  const int64_t* candidate_stride;  // same layout
  const uint8_t* vector_ok;         // [num_runs]: all pointers 16-byte aligned, all strides 1
  const Piece* pieces;              // [num_pieces], in run order, pieces of kChunkElements
  int64_t num_pieces;
  int64_t num_candidates;
};

// Host-side builder of one call's device scratch: tables and small per-call arrays are appended
// to a host image, then uploaded with one copy into one stream-ordered allocation, which is freed
// (stream-ordered too) when the Staging goes out of scope, after the kernels that use it.
class Staging {
 public:
  Staging(DeviceStream where) : where_(where) {}
  ~Staging();
  Staging(const Staging&) = delete;
  Staging& operator=(const Staging&) = delete;

  // Reserves n items of T, copied from `source` when not null (zeros otherwise); returns the
  // offset to pass to device().
  template <class T>
  size_t add(const T* source, int64_t n) {
    const size_t offset = (image_.size() + 15) / 16 * 16;
    image_.resize(offset + size_t(n) * sizeof(T), 0);
    if (source && n > 0) std::memcpy(image_.data() + offset, source, size_t(n) * sizeof(T));
    return offset;
  }
  // Uploads the image (once); afterwards device(offset) gives device addresses.
  void upload();
  template <class T>
  T* device(size_t offset) const {
    return reinterpret_cast<T*>(base_ + offset);
  }

 private:
  DeviceStream where_;
  std::vector<unsigned char> image_;
  unsigned char* base_ = nullptr;
  bool pooled_ = false;
};

// Device scratch that needs no host image (activations, partial sums): one stream-ordered
// allocation, released stream-ordered (after the kernels queued before) at scope exit.
class DeviceBuffer {
 public:
  DeviceBuffer(DeviceStream where, size_t bytes);
  ~DeviceBuffer();
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  // The buffer at byte `offset` as T* (offset a multiple of alignof(T)).
  template <class T>
  T* as(size_t offset = 0) const {
    return reinterpret_cast<T*>(base_ + offset);
  }

 private:
  DeviceStream where_;
  unsigned char* base_ = nullptr;
  bool pooled_ = false;
};

// Stages the run table of `runs` and its piece partition; device tables valid after upload().
class StagedRuns {
 public:
  StagedRuns(Staging& staging, const ModelRuns& runs);
  DeviceRuns device(const Staging& staging) const;
  int64_t num_pieces() const { return num_pieces_; }

 private:
  size_t runs_, candidate_, stride_, vector_ok_, pieces_;
  int64_t num_pieces_ = 0;
  int64_t num_candidates_ = 0;
};

// ---- element access on the device: compute type float for 32/16-bit storage, double for 64 ----
template <class T>
struct Element;
template <>
struct Element<float> {
  using compute = float;
  static __device__ __forceinline__ float load(const float* p) { return *p; }
  static __device__ __forceinline__ void store(float* p, float v) { *p = v; }
};
template <>
struct Element<double> {
  using compute = double;
  static __device__ __forceinline__ double load(const double* p) { return *p; }
  static __device__ __forceinline__ void store(double* p, double v) { *p = v; }
};
template <>
struct Element<half_t> {
  using compute = float;
  static __device__ __forceinline__ float load(const half_t* p) { return half_to_float(p->bits); }
  static __device__ __forceinline__ void store(half_t* p, float v) { p->bits = float_to_half(v); }
};
template <>
struct Element<bfloat16_t> {
  using compute = float;
  static __device__ __forceinline__ float load(const bfloat16_t* p) { return bf16_to_float(p->bits); }
  static __device__ __forceinline__ void store(bfloat16_t* p, float v) { p->bits = float_to_bf16(v); }
};

// 16 bytes of storage: 4 floats, 2 doubles, or 8 half/bfloat16 values.
template <class T>
constexpr int kVectorLanes = int(16 / sizeof(T));

template <class T>
struct Vector {
  typename Element<T>::compute v[kVectorLanes<T>];
};

template <class T>
__device__ __forceinline__ Vector<T> load_vector(const T* p) {
  // A plain load, not __ldg: the update may write the local model in place during the kernel, which
  // the non-coherent read-only path does not allow.
  const uint4 raw = *reinterpret_cast<const uint4*>(p);
  T items[kVectorLanes<T>];
  static_assert(sizeof items == sizeof raw, "a vector is 16 bytes");
  memcpy(items, &raw, sizeof raw);
  Vector<T> out;
#pragma unroll
  for (int i = 0; i < kVectorLanes<T>; ++i) out.v[i] = Element<T>::load(items + i);
  return out;
}

template <class T>
__device__ __forceinline__ void store_vector(T* p, const Vector<T>& value) {
  T items[kVectorLanes<T>];
#pragma unroll
  for (int i = 0; i < kVectorLanes<T>; ++i) Element<T>::store(items + i, value.v[i]);
  uint4 raw;
  memcpy(&raw, items, sizeof raw);
  *reinterpret_cast<uint4*>(p) = raw;
}

// Sum of one double per thread over the block, in a fixed order (shuffle tree within each warp,
// then the warps' sums by warp 0). The total is valid in thread 0.
__device__ __forceinline__ double block_sum(double value) {
  __shared__ double warp_sums[kThreads / 32];
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) value += __shfl_down_sync(0xffffffffu, value, offset);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) warp_sums[warp] = value;
  __syncthreads();
  if (warp == 0) {
    value = lane < kThreads / 32 ? warp_sums[lane] : 0.0;
#pragma unroll
    for (int offset = 16; offset > 0; offset /= 2) value += __shfl_down_sync(0xffffffffu, value, offset);
  }
  __syncthreads();  // warp_sums may be reused by the caller's next block_sum
  return value;
}

// Calls f(TypeTag-like pointer type) for a run's storage dtype, on the device.
template <class F>
__device__ __forceinline__ void with_dtype(DType dtype, F&& f) {
  switch (dtype) {
    case DType::float32: f(static_cast<float*>(nullptr)); break;
    case DType::float64: f(static_cast<double*>(nullptr)); break;
    case DType::float16: f(static_cast<half_t*>(nullptr)); break;
    case DType::bfloat16: f(static_cast<bfloat16_t*>(nullptr)); break;
  }
}

}  // namespace cuda
}  // namespace fomo
