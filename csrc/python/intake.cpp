#include "python/intake.h"

#include <algorithm>
#include <array>
#include <sstream>
#include <stdexcept>

#include <pybind11/stl.h>

#include "fomo/check.h"

namespace fomo {
namespace python {

namespace {
thread_local IntakeScope* innermost_scope = nullptr;
}  // namespace

IntakeScope::IntakeScope() : outer_(innermost_scope) { innermost_scope = this; }
IntakeScope::~IntakeScope() { innermost_scope = outer_; }
IntakeScope* IntakeScope::current() { return innermost_scope; }

void IntakeScope::use_stream(uintptr_t stream) {
  if (!streams.chosen) {
    streams.chosen = true;
    streams.work = stream;
    return;
  }
  if (stream == streams.work) return;
  for (uintptr_t p : streams.producers)
    if (p == stream) return;
  streams.producers.push_back(stream);
}

std::string Device::str() const { return kind == DeviceKind::cpu ? std::string("cpu") : concat("cuda:", index); }

int64_t ArrayView::numel() const {
  int64_t n = 1;
  for (int64_t s : shape) n *= s;
  return n;
}

std::string ArrayView::shape_str() const {
  std::ostringstream out;
  out << "(";
  for (size_t i = 0; i < shape.size(); ++i) out << (i ? ", " : "") << shape[i];
  out << (shape.size() == 1 ? ",)" : ")");
  return out.str();
}

std::pair<uintptr_t, uintptr_t> ArrayView::extent() const {
  if (numel() == 0) return {0, 0};
  int64_t low = 0, high = 0;
  for (size_t i = 0; i < shape.size(); ++i) {
    const int64_t reach = (shape[i] - 1) * strides[i];
    (reach < 0 ? low : high) += reach;
  }
  const auto base = reinterpret_cast<uintptr_t>(data);
  return {base + low * itemsize, base + (high + 1) * itemsize};
}

ArrayView ArrayView::row(int64_t r) const {
  ArrayView v = *this;
  v.data = static_cast<char*>(data) + r * strides[0] * itemsize;
  v.shape.assign(shape.begin() + 1, shape.end());
  v.strides.assign(strides.begin() + 1, strides.end());
  return v;
}

namespace {

// torch's classes and dtypes, looked up once torch has been imported by someone (never imported
// here). Leaked on purpose: Python objects must not be destroyed after interpreter shutdown.
struct Torch {
  py::object tensor, float32, float64, float16, bfloat16, strided, module;
};

const Torch* torch_if_loaded() {
  static Torch* torch = nullptr;
  if (torch) return torch;
  py::dict modules = py::module_::import("sys").attr("modules");
  if (!modules.contains("torch")) return nullptr;
  py::object t = modules["torch"];
  if (!py::hasattr(t, "Tensor")) return nullptr;  // torch still importing
  torch = new Torch{t.attr("Tensor"),
                    t.attr("float32"),
                    t.attr("float64"),
                    t.attr("float16"),
                    t.attr("bfloat16"),
                    t.attr("strided"),
                    t};
  return torch;
}

std::string type_name(py::handle obj) { return py::str(py::type::of(obj).attr("__name__")); }

// A CUDA array reached a build without CUDA kernels: say so, naming the argument.
[[noreturn]] void fail_no_cuda(const std::string& what, const std::string& kind) {
  fail_type(what, " is a CUDA array (", kind,
            ") but this build of fomo_core has no CUDA kernels "
            "(it was built without a CUDA toolkit; rebuild with nvcc on the PATH, or pass CPU arrays)");
}

// torch's current stream on `device`, once per call and device.
uintptr_t torch_current_stream(const Torch& torch, IntakeScope& scope, int device) {
  for (const auto& known : scope.torch_streams)
    if (known.first == device) return known.second;
  const uintptr_t stream =
      torch.module.attr("cuda").attr("current_stream")(device).attr("cuda_stream").cast<uintptr_t>();
  scope.torch_streams.emplace_back(device, stream);
  return stream;
}

void set_dtype(ArrayView& v, DType dtype) {
  v.floating = true;
  v.dtype = dtype;
  v.itemsize = dtype == DType::float64 ? 8 : dtype == DType::float32 ? 4 : 2;
}

const char* numpy_name(DType dtype) {
  switch (dtype) {
    case DType::float32: return "float32";
    case DType::float64: return "float64";
    case DType::float16: return "float16";
    case DType::bfloat16: return "bfloat16";
  }
  return "?";
}

// torch.Size and stride() are tuples of ints: read them directly, without the generic caster.
std::vector<int64_t> int_tuple(const py::object& t) {
  if (!PyTuple_Check(t.ptr())) return t.cast<std::vector<int64_t>>();
  const Py_ssize_t n = PyTuple_GET_SIZE(t.ptr());
  std::vector<int64_t> out(static_cast<size_t>(n));
  for (Py_ssize_t i = 0; i < n; ++i) out[size_t(i)] = PyLong_AsLongLong(PyTuple_GET_ITEM(t.ptr(), i));
  return out;
}

ArrayView from_torch(py::handle obj, const Torch& torch, const std::string& what) {
  ArrayView v;
  py::object dtype = obj.attr("dtype");
  if (dtype.is(torch.float32))
    set_dtype(v, DType::float32);
  else if (dtype.is(torch.float64))
    set_dtype(v, DType::float64);
  else if (dtype.is(torch.float16))
    set_dtype(v, DType::float16);
  else if (dtype.is(torch.bfloat16))
    set_dtype(v, DType::bfloat16);
  else
    v.itemsize = obj.attr("element_size")().cast<int64_t>();
  v.dtype_name = v.floating ? std::string("torch.") + numpy_name(v.dtype) : std::string(py::str(dtype));
  if (!py::object(obj.attr("layout")).is(torch.strided))
    fail_type(what, " is a ", std::string(py::str(obj.attr("layout"))),
              " tensor; only dense (strided) tensors are supported");
  // A lazily negated view (z.conj().imag, torch._neg_view) holds the un-negated values in memory:
  // reading or writing that memory would flip every sign. (Conjugate bits only exist on complex
  // tensors, which no op takes.)
  if (obj.attr("is_neg")().cast<bool>())
    fail_value(what,
               " is a torch tensor with its negative bit set (a lazily negated view such as "
               "z.conj().imag); pass t.resolve_neg() instead");
  v.data = reinterpret_cast<void*>(obj.attr("data_ptr")().cast<uintptr_t>());
  v.shape = int_tuple(obj.attr("shape"));
  v.strides = int_tuple(obj.attr("stride")());
  if (obj.attr("is_cpu").cast<bool>()) {
    // the common case, settled with one attribute
  } else if (obj.attr("is_cuda").cast<bool>()) {
#if !defined(FOMO_HAVE_CUDA)
    fail_no_cuda(what, concat("torch.Tensor on ", std::string(py::str(obj.attr("device")))));
#endif
    v.device.kind = DeviceKind::cuda;
    py::object index = obj.attr("device").attr("index");
    v.device.index = index.is_none() ? 0 : index.cast<int>();
    if (IntakeScope* scope = IntakeScope::current())
      scope->use_stream(torch_current_stream(torch, *scope, v.device.index));
  } else {
    const std::string type = py::str(obj.attr("device").attr("type"));
    fail_type(what, " is on device '", type, "'; fomo_core runs on cpu and cuda tensors");
  }
  return v;
}

// Sets v's dtype to the one whose code `code` is, in a protocol's codes for float32, float64 and
// float16 (in that order); false when it is none of them.
bool set_dtype_by_code(ArrayView& v, const std::string& code, const std::array<const char*, 3>& codes) {
  const DType dtypes[3] = {DType::float32, DType::float64, DType::float16};
  for (int k = 0; k < 3; ++k) {
    if (code == codes[k]) {
      set_dtype(v, dtypes[k]);
      return true;
    }
  }
  return false;
}

// A PEP 3118 format of one native float, e.g. "f", "<d", "=e".
bool dtype_from_format(const char* format, ArrayView& v) {
  std::string f(format ? format : "");
  if (!f.empty() && (f[0] == '@' || f[0] == '=' || f[0] == '<')) f.erase(0, 1);
  return set_dtype_by_code(v, f, {"f", "d", "e"});
}

bool from_buffer(py::handle obj, ArrayView& v, const std::string& what) {
  Py_buffer buffer;
  if (PyObject_GetBuffer(obj.ptr(), &buffer, PyBUF_RECORDS_RO) != 0) {
    PyErr_Clear();
    return false;
  }
  v.data = buffer.buf;
  v.readonly = buffer.readonly != 0;
  v.itemsize = buffer.itemsize;
  v.shape.assign(buffer.shape, buffer.shape + buffer.ndim);
  bool aligned = true;
  for (int i = 0; i < buffer.ndim; ++i) {
    aligned = aligned && buffer.strides[i] % buffer.itemsize == 0;
    v.strides.push_back(buffer.strides[i] / buffer.itemsize);
  }
  // The library's own dtype name only where it is not one of ours (messages about foreign dtypes).
  if (dtype_from_format(buffer.format, v))
    v.dtype_name = numpy_name(v.dtype);
  else
    v.dtype_name = py::hasattr(obj, "dtype") ? std::string(py::str(obj.attr("dtype")))
                                             : std::string(buffer.format ? buffer.format : "?");
  PyBuffer_Release(&buffer);
  if (!aligned) fail_value(what, " has strides that are not a multiple of its item size");
  return true;
}

// Row-major strides (in elements) of a compact array of this shape.
std::vector<int64_t> compact_strides(const std::vector<int64_t>& shape) {
  std::vector<int64_t> strides(shape.size(), 1);
  for (int64_t i = int64_t(shape.size()) - 2; i >= 0; --i) strides[i] = strides[i + 1] * shape[i + 1];
  return strides;
}

// Byte strides to element strides, refusing strides that split an element.
std::vector<int64_t> element_strides(const std::vector<int64_t>& bytes, int64_t itemsize, const std::string& what) {
  std::vector<int64_t> strides;
  for (int64_t b : bytes) {
    if (b % itemsize != 0)
      fail_value(what, " has a stride of ", b, " bytes, not a multiple of its item size ", itemsize);
    strides.push_back(b / itemsize);
  }
  return strides;
}

// The fields NumPy's __array_interface__ and __cuda_array_interface__ share: data pointer and
// read-only flag, shape, typestr (ml_dtypes' bfloat16 is '<V2' named bfloat16) and byte strides.
void read_interface(py::handle obj, const py::dict& face, ArrayView& v, const std::string& what) {
  py::tuple data = face["data"];
  v.data = reinterpret_cast<void*>(data[0].cast<uintptr_t>());
  v.readonly = data[1].cast<bool>();
  v.shape = face["shape"].cast<std::vector<int64_t>>();
  const std::string typestr = face["typestr"].cast<std::string>();
  v.itemsize = std::stoll(typestr.substr(2));
  v.dtype_name = py::hasattr(obj, "dtype") ? std::string(py::str(obj.attr("dtype"))) : typestr;
  if (!set_dtype_by_code(v, typestr, {"<f4", "<f8", "<f2"}) && typestr == "<V2" && v.dtype_name == "bfloat16")
    set_dtype(v, DType::bfloat16);
  if (face.contains("strides") && !face["strides"].is_none())
    v.strides = element_strides(face["strides"].cast<std::vector<int64_t>>(), v.itemsize, what);
  else
    v.strides = compact_strides(v.shape);
}

// __array_interface__ (NumPy's protocol): also how ml_dtypes' bfloat16 arrays arrive, which the
// buffer protocol cannot express.
bool from_array_interface(py::handle obj, ArrayView& v, const std::string& what) {
  if (!py::hasattr(obj, "__array_interface__")) return false;
  read_interface(obj, obj.attr("__array_interface__"), v, what);
  return true;
}

// __cuda_array_interface__ (CuPy, Numba, ...): a device pointer, a typestr and strides in bytes.
// Its 'stream' (version 3) is where the producer ordered its work: None means no ordering needed,
// 1 and 2 are the legacy and per-thread default streams, anything else a stream handle.
bool from_cuda_array_interface(py::handle obj, ArrayView& v, const std::string& what) {
  if (!py::hasattr(obj, "__cuda_array_interface__")) return false;
#if !defined(FOMO_HAVE_CUDA)
  (void)v;
  fail_no_cuda(what, type_name(obj));
#else
  py::dict face = obj.attr("__cuda_array_interface__");
  if (face.contains("mask") && !face["mask"].is_none())
    fail_type(what, " is a masked CUDA array; fomo_core takes unmasked arrays only");
  read_interface(obj, face, v, what);
  v.device.kind = DeviceKind::cuda;
  try {
    // The interface does not name the device: ask CUDA who owns the pointer (an empty array may
    // carry a null pointer, which belongs to the current device).
    v.device.index = v.data && v.numel() > 0 ? cuda::pointer_device(v.data) : cuda::current_device();
  } catch (const std::runtime_error& e) {
    throw std::runtime_error(concat(what, ": cannot tell which GPU holds this ", type_name(obj), ": ", e.what()));
  }
  if (IntakeScope* scope = IntakeScope::current()) {
    if (face.contains("stream") && !face["stream"].is_none()) {
      const uintptr_t stream = face["stream"].cast<uintptr_t>();
      if (stream == 0) fail_value(what, "'s __cuda_array_interface__ has stream 0, which the protocol forbids");
      scope->use_stream(stream);
    }
  }
  return true;
#endif
}

// DLPack (the `__dlpack__` / `__dlpack_device__` protocol), as its specification lays the structs out.
struct DLDevice {
  int32_t device_type;
  int32_t device_id;
};
struct DLDataType {
  uint8_t code;
  uint8_t bits;
  uint16_t lanes;
};
struct DLTensor {
  void* data;
  DLDevice device;
  int32_t ndim;
  DLDataType dtype;
  int64_t* shape;
  int64_t* strides;  // in elements; null means compact row-major
  uint64_t byte_offset;
};
struct DLManagedTensor {
  DLTensor dl_tensor;
  void* manager_ctx;
  void (*deleter)(DLManagedTensor*);
};
constexpr int32_t kDLCPU = 1, kDLCUDA = 2;
constexpr uint8_t kDLInt = 0, kDLUInt = 1, kDLFloat = 2, kDLBfloat = 4, kDLBool = 6;

std::string dlpack_dtype_name(const DLDataType& t) {
  const char* kind = t.code == kDLFloat    ? "float"
                     : t.code == kDLBfloat ? "bfloat"
                     : t.code == kDLInt    ? "int"
                     : t.code == kDLUInt   ? "uint"
                     : t.code == kDLBool   ? "bool"
                                           : "dlpack-code-";
  return t.code == kDLBool ? std::string(kind)
                           : concat(kind, t.code > kDLBool ? std::to_string(t.code) : "", int(t.bits));
}

// DLPack: the capsule stays in the call's IntakeScope, unconsumed, so that the producer's own
// capsule destructor releases the tensor once the kernels have been queued. For a CUDA array the
// producer is asked to order its work before the call's stream (stream=), as the protocol says.
bool from_dlpack(py::handle obj, ArrayView& v, const std::string& what) {
  if (!py::hasattr(obj, "__dlpack__") || !py::hasattr(obj, "__dlpack_device__")) return false;
  IntakeScope* scope = IntakeScope::current();
  if (!scope) fail_type(what, " is a DLPack array (", type_name(obj), "), which this function does not take");
  const py::tuple device = obj.attr("__dlpack_device__")();
  const int32_t device_type = device[0].cast<int32_t>();
  py::object capsule;
  if (device_type == kDLCPU) {
    capsule = obj.attr("__dlpack__")();
  } else if (device_type == kDLCUDA) {
#if !defined(FOMO_HAVE_CUDA)
    fail_no_cuda(what, type_name(obj));
#else
    if (!scope->streams.chosen) scope->use_stream(1);  // nobody named a stream: the legacy default one
    // The protocol forbids 0 and spells the legacy default stream 1.
    const uintptr_t stream = scope->streams.work == 0 ? 1 : scope->streams.work;
    capsule = obj.attr("__dlpack__")(py::arg("stream") = stream);
#endif
  } else {
    fail_type(what, " is a DLPack array on device type ", device_type, "; fomo_core takes CPU and CUDA arrays");
  }
  if (!PyCapsule_IsValid(capsule.ptr(), "dltensor")) fail_type(what, ".__dlpack__() did not return a DLPack capsule");
  scope->keep_alive.push_back(capsule);
  const auto* managed = static_cast<const DLManagedTensor*>(PyCapsule_GetPointer(capsule.ptr(), "dltensor"));
  const DLTensor& t = managed->dl_tensor;
  v.data = static_cast<char*>(t.data) + t.byte_offset;
  v.shape.assign(t.shape, t.shape + t.ndim);
  v.strides = t.strides ? std::vector<int64_t>(t.strides, t.strides + t.ndim) : compact_strides(v.shape);
  v.dtype_name = dlpack_dtype_name(t.dtype);
  v.itemsize = (int64_t(t.dtype.bits) * t.dtype.lanes + 7) / 8;
  if (t.dtype.lanes == 1) {
    if (t.dtype.code == kDLFloat && t.dtype.bits == 32)
      set_dtype(v, DType::float32);
    else if (t.dtype.code == kDLFloat && t.dtype.bits == 64)
      set_dtype(v, DType::float64);
    else if (t.dtype.code == kDLFloat && t.dtype.bits == 16)
      set_dtype(v, DType::float16);
    else if (t.dtype.code == kDLBfloat && t.dtype.bits == 16)
      set_dtype(v, DType::bfloat16);
  }
  if (t.device.device_type == kDLCUDA) {
    v.device.kind = DeviceKind::cuda;
    v.device.index = t.device.device_id;
  }
  return true;
}

}  // namespace

ArrayView intake(py::handle obj, const std::string& what) {
  if (const Torch* torch = torch_if_loaded()) {
    // A C-level subtype test: isinstance() would run torch's metaclass __instancecheck__.
    if (PyType_IsSubtype(Py_TYPE(obj.ptr()), reinterpret_cast<PyTypeObject*>(torch->tensor.ptr())))
      return from_torch(obj, *torch, what);
  }
  ArrayView v;
  if (from_buffer(obj, v, what) || from_array_interface(obj, v, what) || from_cuda_array_interface(obj, v, what) ||
      from_dlpack(obj, v, what))
    return v;
  fail_type(what,
            " must be an array (NumPy array, torch tensor, CuPy array, or an object with the buffer "
            "protocol, __array_interface__, __cuda_array_interface__ or __dlpack__), got ",
            type_name(obj));
}

}  // namespace python
}  // namespace fomo
