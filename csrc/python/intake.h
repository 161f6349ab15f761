// Array intake: any supported Python array (NumPy and other buffer-protocol objects, torch tensors,
// objects with __array_interface__ or __cuda_array_interface__) seen as a raw strided view.
// Nothing is copied; the caller keeps the Python objects alive for the duration of the call.
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
  bool floating = false;   // one of the four storage dtypes
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

// Reads obj as an array; `what` names the argument in error messages (TypeError when obj is no
// array at all or has an unsupported dtype).
ArrayView intake(py::handle obj, const std::string& what);

}  // namespace python
}  // namespace fomo
