// Kernel declarations over raw pointers, and the constants every layer shares (the extension exports
// them to Python: fomo_core._C.STATUS, NORMS, CHUNK_ELEMENTS). Nothing here knows Python or any
// framework: a model is a table of runs (1-D strided stretches of elements that line up across the
// local model, the output and every candidate), and every op reads and writes through that table.
#pragma once

#include <cstdint>

namespace fomo {

enum class DType : int32_t { float32 = 0, float64 = 1, float16 = 2, bfloat16 = 3 };
enum class Norm : int32_t { l2 = 0, l1 = 1 };
// The norms by the names the Python API takes (norm="l2" / "l1").
struct NormName {
  const char* name;
  Norm norm;
};
constexpr NormName kNormNames[] = {{"l2", Norm::l2}, {"l1", Norm::l1}};

// One stretch of `length` elements at the same logical positions in every model. Strides are in
// elements and may be any value (views of views, transposes); `out` is null for read-only ops.
struct Run {
  DType dtype;
  int64_t length;
  const void* local;
  int64_t local_stride;
  void* out;
  int64_t out_stride;
};

// The runs of one call and, for each run, where every candidate keeps that stretch.
struct ModelRuns {
  int64_t num_runs = 0;
  int64_t num_candidates = 0;
  const Run* runs = nullptr;
  const void* const* candidate = nullptr;     // [num_runs * num_candidates], run-major
  const int64_t* candidate_stride = nullptr;  // same layout
  int64_t total_elements = 0;                 // sum of run lengths
};

// What happened to each candidate in a scoring pass (see math.h for the rules).
enum CandidateStatus : uint8_t { kAccepted = 0, kRejected = 1, kSkipped = 2 };
struct StatusName {
  const char* name;
  CandidateStatus status;
};
constexpr StatusName kStatusNames[] = {{"accepted", kAccepted}, {"rejected", kRejected}, {"skipped", kSkipped}};

// Elements per chunk of the fixed partition that the CPU and CUDA kernels cut a model into (a
// chunk of the CPU kernels, the piece one CUDA block handles). Never derived from the thread count
// or the GPU: the partition is what fixes every summation order. A multiple of 8, so that a chunk
// of an aligned run starts 16-byte aligned for every dtype.
constexpr int64_t kChunkElements = 16384;

// A stretch of one run: elements [begin, begin + count) of runs[run].
struct Piece {
  int64_t run;
  int64_t begin;
  int64_t count;
};

struct StepOptions {
  Norm norm = Norm::l2;
  double eps = 0.0;
  double max_distance = __builtin_inf();  // the guard: farther candidates are rejected (math.h)
  bool all_scores = true;  // measure non-improving candidates too (their negative scores feed the affinity)
  bool update = true;      // write the updated parameters to the runs' out pointers
};

// Per-candidate results of a step, caller-allocated, length num_candidates each.
struct StepResult {
  double* weights;
  double* scores;     // NaN where skipped
  double* distances;  // NaN where not measured
  uint8_t* status;    // CandidateStatus
};

namespace cpu {

// dist[m] = ||c_m - local|| for every m with measure[m] != 0 (others untouched); float64 sums with a
// fixed chunking and reduction order, so the result does not depend on the thread count.
void candidate_distances(const ModelRuns& runs, Norm norm, const uint8_t* measure, double* dist);

// out = local + sum over m with weights[m] != 0 of weights[m] * (c_m - local). Candidates with a
// zero weight are never read; with no nonzero weight out receives local's bits unchanged.
void apply_update(const ModelRuns& runs, const double* weights);

// The fused FedFomo step: distances of the candidates that need measuring, scores, weights, and
// (when options.update) the update.
void fomo_step(const ModelRuns& runs, const StepOptions& options, double local_loss, const double* candidate_losses,
               StepResult result);

// Instruction set the dispatcher chose ("avx2" or "base") and OpenMP threads.
const char* isa_name();
int max_threads();
int64_t parallel_threshold();  // element-candidate pairs of work below which one thread runs
void set_num_threads(int n);

}  // namespace cpu

// CUDA twins of the cpu ops (csrc/cuda/, only in builds with CUDA: FOMO_HAVE_CUDA). Every pointer
// in `runs` and every StepResult/`dist` pointer is device memory of `where.device`; the small
// per-candidate host inputs (measure, weights, candidate_losses) are host memory and travel to the
// device with the run table in one copy. Work is queued on `where.stream` and the calls return
// without waiting for it (no host round-trip: scores, weights and the update stay on the device).
// Results are bitwise reproducible: a fixed partition and fixed reduction order, no float atomics.
// CUDA failures throw std::runtime_error carrying the CUDA error name and string.
namespace cuda {

struct DeviceStream {
  int device = 0;
  void* stream = nullptr;  // a cudaStream_t: nullptr is the default stream, 1 legacy, 2 per-thread
};

void candidate_distances(const ModelRuns& runs, Norm norm, const uint8_t* measure, double* dist, DeviceStream where);
void apply_update(const ModelRuns& runs, const double* weights, DeviceStream where);
void fomo_step(const ModelRuns& runs, const StepOptions& options, double local_loss, const double* candidate_losses,
               StepResult result, DeviceStream where);

// Devices the CUDA runtime sees; 0 (never an exception) when there is no driver or no device.
int device_count();
// The device that owns the memory at `pointer` (for arrays that do not say, like
// __cuda_array_interface__); throws when CUDA cannot tell.
int pointer_device(const void* pointer);
// The calling thread's current device (where an empty array with a null pointer belongs).
int current_device();
// Makes `waiter` wait for the work queued so far on `producer` (both streams of `device`).
void stream_wait(int device, void* waiter, void* producer);

}  // namespace cuda
}  // namespace fomo
