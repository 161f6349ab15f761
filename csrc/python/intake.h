// Array intake: any supported Python array (NumPy and other buffer-protocol objects, torch tensors,
// objects with __array_interface__ or __cuda_array_interface__ (CuPy, Numba), DLPack producers
// (JAX and others)) seen as a raw strided view. Nothing is copied; the caller keeps the Python
// objects alive for the duration of the call, and an IntakeScope keeps what intake itself creates.
#pragma once

#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>
#include <vector>

#include "fomo/ops.h"

namespace fomo {
namespace python {

namespace py = pybind11;

enum class DeviceKind { cpu, cuda };

struct Device {
  DeviceKind kind = DeviceKind::cpu;
  int index = 0;
  bool operator==(const Device& o) const { return kind == o.kind && index == o.index; }
  bool operator!=(const Device& o) const { return !(*this == o); }
  std::string str() const;
};

struct ArrayView {
  void* data = nullptr;
  bool floating = false;  // one of the four storage dtypes
  DType dtype = DType::float32;
  std::string dtype_name;  // as the caller's library spells it, for messages
  int64_t itemsize = 0;
  std::vector<int64_t> shape;
  std::vector<int64_t> strides;  // in elements
  Device device;
  bool readonly = false;

  int64_t numel() const;
  std::string shape_str() const;
  // [first, last) bytes that the view can touch; empty views span nothing.
  std::pair<uintptr_t, uintptr_t> extent() const;
  // Sub-view of row `row` of a 2-D view (a candidate of a [M, P] array).
  ArrayView row(int64_t row) const;
};

// The CUDA side of one call, filled in by intake(): the stream the kernels run on (the caller's
// current stream: torch's current stream, a __cuda_array_interface__ 'stream', the one DLPack
// producers were asked to order their work on) and the other producer streams it must wait for.
struct CudaStreams {
  bool chosen = false;
  uintptr_t work = 0;                // a cudaStream_t; 0 is the default stream
  std::vector<uintptr_t> producers;  // streams (other than work) the arrays' producers named
};

// Per-call intake state. A binding opens one around reading its arrays and running the kernels;
// intake() records into the innermost scope of the calling thread. DLPack capsules live here until
// the kernels have been queued (their producers' memory must outlive the call).
class IntakeScope {
 public:
  IntakeScope();
  ~IntakeScope();
  IntakeScope(const IntakeScope&) = delete;
  IntakeScope& operator=(const IntakeScope&) = delete;
  static IntakeScope* current();

  CudaStreams streams;
  std::vector<py::object> keep_alive;
  std::vector<std::pair<int, uintptr_t>> torch_streams;  // torch's current stream, per device

  // Records a CUDA array's stream: the first one becomes the work stream, others must be joined.
  void use_stream(uintptr_t stream);

 private:
  IntakeScope* outer_;
};

// Reads obj as an array; `what` names the argument in error messages (TypeError when obj is no
// array at all or has an unsupported dtype).
ArrayView intake(py::handle obj, const std::string& what);

}  // namespace python
}  // namespace fomo
