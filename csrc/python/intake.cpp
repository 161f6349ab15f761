#include "python/intake.h"

#include <algorithm>
#include <sstream>

#include <pybind11/stl.h>

#include "fomo/check.h"

namespace fomo {
namespace python {

std::string Device::str() const {
  return kind == DeviceKind::cpu ? std::string("cpu") : concat("cuda:", index);
}

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
  py::object tensor, float32, float64, float16, bfloat16, strided;
};

const Torch* torch_if_loaded() {
  static Torch* torch = nullptr;
  if (torch) return torch;
  py::dict modules = py::module_::import("sys").attr("modules");
  if (!modules.contains("torch")) return nullptr;
  py::object t = modules["torch"];
  if (!py::hasattr(t, "Tensor")) return nullptr;  // torch still importing
  torch = new Torch{t.attr("Tensor"), t.attr("float32"), t.attr("float64"), t.attr("float16"),
                    t.attr("bfloat16"), t.attr("strided")};
  return torch;
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
  if (dtype.is(torch.float32)) set_dtype(v, DType::float32);
  else if (dtype.is(torch.float64)) set_dtype(v, DType::float64);
  else if (dtype.is(torch.float16)) set_dtype(v, DType::float16);
  else if (dtype.is(torch.bfloat16)) set_dtype(v, DType::bfloat16);
  else v.itemsize = obj.attr("element_size")().cast<int64_t>();
  v.dtype_name = v.floating ? std::string("torch.") + numpy_name(v.dtype) : std::string(py::str(dtype));
  if (!py::object(obj.attr("layout")).is(torch.strided))
    fail_type(what, " is a ", std::string(py::str(obj.attr("layout"))),
              " tensor; only dense (strided) tensors are supported");
  v.data = reinterpret_cast<void*>(obj.attr("data_ptr")().cast<uintptr_t>());
  v.shape = int_tuple(obj.attr("shape"));
  v.strides = int_tuple(obj.attr("stride")());
  if (obj.attr("is_cpu").cast<bool>()) {
    // the common case, settled with one attribute
  } else if (obj.attr("is_cuda").cast<bool>()) {
    v.device.kind = DeviceKind::cuda;
    py::object index = obj.attr("device").attr("index");
    v.device.index = index.is_none() ? 0 : index.cast<int>();
  } else {
    const std::string type = py::str(obj.attr("device").attr("type"));
    fail_type(what, " is on device '", type, "'; fomo_core runs on cpu and cuda tensors");
  }
  return v;
}

// A PEP 3118 format of one native float, e.g. "f", "<d", "=e".
bool dtype_from_format(const char* format, ArrayView& v) {
  std::string f(format ? format : "");
  if (!f.empty() && (f[0] == '@' || f[0] == '=' || f[0] == '<')) f.erase(0, 1);
  if (f == "f") set_dtype(v, DType::float32);
  else if (f == "d") set_dtype(v, DType::float64);
  else if (f == "e") set_dtype(v, DType::float16);
  else return false;
  return true;
}

bool from_buffer(py::handle obj, ArrayView& v) {
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
  if (dtype_from_format(buffer.format, v)) v.dtype_name = numpy_name(v.dtype);
  else v.dtype_name = py::hasattr(obj, "dtype") ? std::string(py::str(obj.attr("dtype")))
                                                : std::string(buffer.format ? buffer.format : "?");
  PyBuffer_Release(&buffer);
  if (!aligned) fail_value("an array has strides that are not a multiple of its item size");
  return true;
}

// __array_interface__ (NumPy's protocol): also how ml_dtypes' bfloat16 arrays arrive, which the
// buffer protocol cannot express.
bool from_array_interface(py::handle obj, ArrayView& v) {
  if (!py::hasattr(obj, "__array_interface__")) return false;
  py::dict face = obj.attr("__array_interface__");
  py::tuple data = face["data"];
  v.data = reinterpret_cast<void*>(data[0].cast<uintptr_t>());
  v.readonly = data[1].cast<bool>();
  v.shape = face["shape"].cast<std::vector<int64_t>>();
  const std::string typestr = face["typestr"].cast<std::string>();
  v.itemsize = std::stoll(typestr.substr(2));
  v.dtype_name = py::hasattr(obj, "dtype") ? std::string(py::str(obj.attr("dtype"))) : typestr;
  if (typestr == "<f4") set_dtype(v, DType::float32);
  else if (typestr == "<f8") set_dtype(v, DType::float64);
  else if (typestr == "<f2") set_dtype(v, DType::float16);
  else if (typestr == "<V2" && v.dtype_name == "bfloat16") set_dtype(v, DType::bfloat16);
  if (face.contains("strides") && !face["strides"].is_none()) {
    for (int64_t s : face["strides"].cast<std::vector<int64_t>>()) v.strides.push_back(s / v.itemsize);
  } else {
    v.strides.assign(v.shape.size(), 1);
    for (int64_t i = int64_t(v.shape.size()) - 2; i >= 0; --i) v.strides[i] = v.strides[i + 1] * v.shape[i + 1];
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
  if (from_buffer(obj, v) || from_array_interface(obj, v)) return v;
  if (py::hasattr(obj, "__cuda_array_interface__"))
    fail_type(what, " is a CUDA array (", std::string(py::str(py::type::of(obj).attr("__name__"))),
              ") but this build of fomo_core has no support for that array type");
  fail_type(what, " must be an array (NumPy array, torch tensor, or an object with the buffer "
                  "protocol or __array_interface__), got ",
            std::string(py::str(py::type::of(obj).attr("__name__"))));
}

}  // namespace python
}  // namespace fomo
