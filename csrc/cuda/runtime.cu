// Host-side CUDA plumbing shared by the op files: errors, the device guard, the staging of one
// call's tables in device memory, and the small runtime queries the bindings need.
#include <stdexcept>
#include <string>

#include "cuda/common.cuh"

namespace fomo {
namespace cuda {

void check(cudaError_t status, const char* what) {
  if (status == cudaSuccess) return;
  cudaGetLastError();  // reset a non-sticky error so that it is not reported again by the next check
  throw std::runtime_error(std::string("fomo_core CUDA error in ") + what + ": " + cudaGetErrorName(status) + ": " +
                           cudaGetErrorString(status));
}

void check_launch(const char* kernel) { check(cudaGetLastError(), kernel); }

void check_grid(int64_t blocks, const char* kernel) {
  if (blocks > int64_t(0x7fffffff))
    throw std::runtime_error(std::string("fomo_core CUDA: ") + kernel + " needs " + std::to_string(blocks) +
                             " blocks, more than one launch allows; split the model into smaller calls");
}

DeviceGuard::DeviceGuard(int device) {
  check(cudaGetDevice(&previous_), "cudaGetDevice");
  if (previous_ != device) check(cudaSetDevice(device), "cudaSetDevice");
}

DeviceGuard::~DeviceGuard() {
  int current = -1;
  if (cudaGetDevice(&current) == cudaSuccess && current != previous_) cudaSetDevice(previous_);
}

namespace {

// Whether the device has the stream-ordered allocator (cudaMallocAsync); queried once per device.
bool memory_pools_supported(int device) {
  static int cached[64] = {};  // 0 unknown, 1 yes, 2 no
  if (device >= 0 && device < 64 && cached[device]) return cached[device] == 1;
  int supported = 0;
  if (cudaDeviceGetAttribute(&supported, cudaDevAttrMemoryPoolsSupported, device) != cudaSuccess) {
    cudaGetLastError();  // a failed query is not a sticky error; clear it
    supported = 0;
  }
  if (device >= 0 && device < 64) cached[device] = supported ? 1 : 2;
  return supported != 0;
}

// One stream-ordered allocation on where.stream (plain cudaMalloc where the device has no pools).
unsigned char* allocate(DeviceStream where, size_t bytes, bool* pooled, const char* what) {
  *pooled = memory_pools_supported(where.device);
  void* base = nullptr;
  if (*pooled)
    check(cudaMallocAsync(&base, bytes, as_stream(where.stream)), what);
  else
    check(cudaMalloc(&base, bytes), what);
  return static_cast<unsigned char*>(base);
}

// Stream-ordered: the memory is released after the kernels queued before this point.
void release(DeviceStream where, unsigned char* base, bool pooled) {
  if (!base) return;
  if (pooled) {
    cudaFreeAsync(base, as_stream(where.stream));
  } else {
    cudaStreamSynchronize(as_stream(where.stream));
    cudaFree(base);
  }
}

}  // namespace

void Staging::upload() {
  if (base_ || image_.empty()) return;
  base_ = allocate(where_, image_.size(), &pooled_, "allocating the call tables");
  // From pageable memory the runtime stages the bytes before returning, so image_ may die after.
  check(cudaMemcpyAsync(base_, image_.data(), image_.size(), cudaMemcpyHostToDevice, as_stream(where_.stream)),
        "cudaMemcpyAsync (call tables)");
}

Staging::~Staging() { release(where_, base_, pooled_); }

DeviceBuffer::DeviceBuffer(DeviceStream where, size_t bytes) : where_(where) {
  if (bytes > 0) base_ = allocate(where_, bytes, &pooled_, "allocating the call scratch");
}

DeviceBuffer::~DeviceBuffer() { release(where_, base_, pooled_); }

StagedRuns::StagedRuns(Staging& staging, const ModelRuns& runs) : num_candidates_(runs.num_candidates) {
  const int64_t num_slots = runs.num_runs * runs.num_candidates;
  std::vector<Piece> pieces;
  std::vector<uint8_t> vector_ok(size_t(runs.num_runs), 0);
  for (int64_t r = 0; r < runs.num_runs; ++r) {
    const Run& run = runs.runs[r];
    auto aligned = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; };
    bool ok = run.local_stride == 1 && aligned(run.local) && (!run.out || (run.out_stride == 1 && aligned(run.out)));
    for (int64_t m = 0; m < runs.num_candidates && ok; ++m) {
      const int64_t slot = r * runs.num_candidates + m;
      ok = runs.candidate_stride[slot] == 1 && aligned(runs.candidate[slot]);
    }
    vector_ok[size_t(r)] = ok ? 1 : 0;
    for (int64_t begin = 0; begin < run.length; begin += kChunkElements)
      pieces.push_back({r, begin, run.length - begin < kChunkElements ? run.length - begin : kChunkElements});
  }
  num_pieces_ = int64_t(pieces.size());
  runs_ = staging.add(runs.runs, runs.num_runs);
  candidate_ = staging.add(runs.candidate, num_slots);
  stride_ = staging.add(runs.candidate_stride, num_slots);
  vector_ok_ = staging.add(vector_ok.data(), int64_t(vector_ok.size()));
  pieces_ = staging.add(pieces.data(), num_pieces_);
}

DeviceRuns StagedRuns::device(const Staging& staging) const {
  return {staging.device<const Run>(runs_),
          staging.device<const void* const>(candidate_),
          staging.device<const int64_t>(stride_),
          staging.device<const uint8_t>(vector_ok_),
          staging.device<const Piece>(pieces_),
          num_pieces_,
          num_candidates_};
}

int device_count() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // no driver or no device: not an error for a CPU user; leave no trace
    return 0;
  }
  return count;
}

int pointer_device(const void* pointer) {
  cudaPointerAttributes attributes{};
  check(cudaPointerGetAttributes(&attributes, pointer), "cudaPointerGetAttributes");
  if (attributes.type != cudaMemoryTypeDevice && attributes.type != cudaMemoryTypeManaged)
    throw std::runtime_error("fomo_core: a CUDA array's pointer is not device memory (cudaPointerGetAttributes)");
  return attributes.device;
}

int current_device() {
  int device = 0;
  check(cudaGetDevice(&device), "cudaGetDevice");
  return device;
}

void stream_wait(int device, void* waiter, void* producer) {
  if (waiter == producer) return;
  DeviceGuard guard(device);
  cudaEvent_t event = nullptr;
  check(cudaEventCreateWithFlags(&event, cudaEventDisableTiming), "cudaEventCreateWithFlags");
  cudaError_t status = cudaEventRecord(event, as_stream(producer));
  if (status == cudaSuccess) status = cudaStreamWaitEvent(as_stream(waiter), event, 0);
  cudaEventDestroy(event);  // safe while pending: released once the wait is satisfied
  check(status, "joining the arrays' CUDA streams");
}

}  // namespace cuda
}  // namespace fomo
