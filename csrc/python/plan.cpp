// Plans: the run table of one set of host arrays, built once and reused while the arrays keep their
// layout. Each call rechecks, per array, what the table was built from (data pointer, shape,
// strides, dtype, writability), reading NumPy's array struct directly and a torch tensor's four
// attributes, and, per container entry, that it still holds the same array. Any difference makes
// the call return None and fomo_core/ops.py builds a new plan (the full intake and its checks): a
// plan never reads through a pointer its arrays no longer have.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include "fomo/check.h"
#include "python/ops.h"

namespace fomo {
namespace python {
namespace {

enum class Source { numpy, torch, other };

// What intake read from one array, and how to read it again quickly.
struct Recorded {
  py::object object;
  Source source;
  ArrayView view;
  py::object dtype;    // NumPy's descr or torch's dtype object, compared by identity
  py::object storage;  // torch: the storage, held so that no other allocation can take its address
};

// container[key] must still be item; len(container) must still be length (key None).
struct Entry {
  py::object container, key, item;
  Py_ssize_t length;
};

PyObject* interned(const char* name) {
  return PyUnicode_InternFromString(name);  // leaked on purpose, like every interned name
}

const py::object* torch_tensor_type() {
  static py::object* type = nullptr;
  if (type) return type;
  py::dict modules = py::module_::import("sys").attr("modules");
  if (!modules.contains("torch")) return nullptr;
  type = new py::object(modules["torch"].attr("Tensor"));  // leaked: must outlive the interpreter's teardown
  return type;
}

bool is_torch(py::handle object) {
  const py::object* type = torch_tensor_type();
  return type && PyType_IsSubtype(Py_TYPE(object.ptr()), reinterpret_cast<PyTypeObject*>(type->ptr()));
}

Recorded record(const IntakeRecord& seen) {
  Recorded r{py::reinterpret_borrow<py::object>(seen.object), Source::other, seen.view, py::none(), py::none()};
  if (py::isinstance<py::array>(seen.object)) {
    r.source = Source::numpy;
    r.dtype = py::reinterpret_borrow<py::object>(
        reinterpret_cast<PyObject*>(py::detail::array_proxy(seen.object.ptr())->descr));
  } else if (is_torch(seen.object)) {
    r.source = Source::torch;
    r.dtype = seen.object.attr("dtype");
    r.storage = seen.object.attr("untyped_storage")();
  }
  return r;
}

bool same_ints(PyObject* tuple, const std::vector<int64_t>& values) {
  if (!tuple || !PyTuple_Check(tuple) || PyTuple_GET_SIZE(tuple) != Py_ssize_t(values.size())) return false;
  for (size_t i = 0; i < values.size(); ++i)
    if (PyLong_AsLongLong(PyTuple_GET_ITEM(tuple, Py_ssize_t(i))) != values[i]) return false;
  return true;
}

bool numpy_unchanged(const Recorded& r) {
  const auto* a = py::detail::array_proxy(r.object.ptr());
  const ArrayView& v = r.view;
  if (a->data != v.data || reinterpret_cast<PyObject*>(a->descr) != r.dtype.ptr() || a->nd != int(v.shape.size()))
    return false;
  for (int d = 0; d < a->nd; ++d)
    if (a->dimensions[d] != v.shape[size_t(d)] || a->strides[d] != v.strides[size_t(d)] * v.itemsize) return false;
  const bool readonly = (a->flags & py::detail::npy_api::NPY_ARRAY_WRITEABLE_) == 0;
  return readonly == v.readonly;
}

// A tensor whose pointer, shape, strides and dtype are unchanged designates the same memory: the
// plan holds the storage it recorded, so no later allocation (host, or device under CUDA's unified
// addresses) can be given that address.
bool torch_unchanged(const Recorded& r) {
  static PyObject* const data_ptr = interned("data_ptr");
  static PyObject* const shape = interned("shape");
  static PyObject* const stride = interned("stride");
  static PyObject* const dtype = interned("dtype");
  PyObject* o = r.object.ptr();
  const auto fetched = [](PyObject* value) {
    if (!value) PyErr_Clear();
    return py::reinterpret_steal<py::object>(value);
  };
  const py::object pointer = fetched(PyObject_CallMethodNoArgs(o, data_ptr));
  if (!pointer || PyLong_AsVoidPtr(pointer.ptr()) != r.view.data) return PyErr_Clear(), false;
  const py::object type = fetched(PyObject_GetAttr(o, dtype));
  if (!type.is(r.dtype)) return false;
  if (!same_ints(fetched(PyObject_GetAttr(o, shape)).ptr(), r.view.shape)) return PyErr_Clear(), false;
  if (!same_ints(fetched(PyObject_CallMethodNoArgs(o, stride)).ptr(), r.view.strides)) return PyErr_Clear(), false;
  return true;
}

bool other_unchanged(const Recorded& r) {
  try {
    const ArrayView v = intake(r.object, "");
    return v.data == r.view.data && v.shape == r.view.shape && v.strides == r.view.strides &&
           v.floating == r.view.floating && v.dtype == r.view.dtype && v.device == r.view.device &&
           v.readonly == r.view.readonly;
  } catch (const std::exception&) {
    return false;
  }
}

bool entry_unchanged(const Entry& e) {
  if (e.key.is_none()) {
    const Py_ssize_t n = PyObject_Length(e.container.ptr());
    if (n < 0) PyErr_Clear();
    return n == e.length;
  }
  PyObject* item = PyObject_GetItem(e.container.ptr(), e.key.ptr());
  if (!item) {
    PyErr_Clear();
    return false;
  }
  Py_DECREF(item);  // only its identity matters, and the entry holds a reference to the recorded one
  return item == e.item.ptr();
}

class Plan {
 public:
  // local/candidates/out/names as the ops take them; entries: (container, key, item) triples and
  // (container, None, length) pairs that tie the leaves to the caller's containers.
  Plan(py::handle local, py::handle candidates, py::handle out, py::handle names, py::handle entries) {
    std::vector<IntakeRecord> seen;
    has_out_ = !out.is_none();
    {
      IntakeScope scope;
      layout_ = build_layout({local, candidates, out, names, &seen});
    }
    if (layout_.device.kind != DeviceKind::cpu)
      fail_value("a plan runs on host arrays; these are on ", layout_.device.str(), " (call the ops directly)");
    for (const IntakeRecord& s : seen) {
      bool known = false;  // out= local in place: the same arrays, checked once
      for (const Recorded& r : arrays_) known = known || r.object.ptr() == s.object.ptr();
      if (!known) arrays_.push_back(record(s));
    }
    for (py::handle e : py::reinterpret_borrow<py::list>(entries)) {
      const py::tuple t = py::reinterpret_borrow<py::tuple>(e);
      if (t[1].is_none())
        entries_.push_back({py::reinterpret_borrow<py::object>(t[0]), py::none(), py::none(), t[2].cast<Py_ssize_t>()});
      else
        entries_.push_back({py::reinterpret_borrow<py::object>(t[0]), py::reinterpret_borrow<py::object>(t[1]),
                            py::reinterpret_borrow<py::object>(t[2]), 0});
    }
  }

  // Whether every container entry and every array is as when the table was built.
  bool current() const {
    for (const Entry& e : entries_)
      if (!entry_unchanged(e)) return false;
    for (const Recorded& r : arrays_) {
      const bool same = r.source == Source::numpy   ? numpy_unchanged(r)
                        : r.source == Source::torch ? torch_unchanged(r)
                                                    : other_unchanged(r);
      if (!same) return false;
    }
    return true;
  }

  const Layout& layout() const { return layout_; }
  void require_out() const {
    if (!has_out_) fail_value("this plan was built without an output; it cannot update");
  }
  int64_t num_runs() const { return int64_t(layout_.runs.size()); }

 private:
  Layout layout_;
  bool has_out_ = false;
  std::vector<Recorded> arrays_;
  std::vector<Entry> entries_;
};

}  // namespace

void bind_plan(py::module_& m) {
  // Each op returns None when the arrays changed since the plan was built (the caller rebuilds).
  py::class_<Plan>(m, "Plan")
      .def(py::init<py::handle, py::handle, py::handle, py::handle, py::handle>(), py::arg("local"),
           py::arg("candidates"), py::arg("out"), py::arg("names"), py::arg("entries"))
      .def_property_readonly("num_runs", &Plan::num_runs)
      .def(
          "candidate_distances",
          [](const Plan& plan, int norm_code) -> py::object {
            const Norm norm = norm_from(norm_code);
            IntakeScope scope;
            if (!plan.current()) return py::none();
            return candidate_distances_on(plan.layout(), scope.streams, norm, py::none());
          },
          py::arg("norm"))
      .def(
          "apply_update",
          [](const Plan& plan, const Vector& weights) -> py::object {
            plan.require_out();
            IntakeScope scope;
            if (!plan.current()) return py::none();
            apply_update_on(plan.layout(), scope.streams, weights);
            return py::bool_(true);
          },
          py::arg("weights"))
      .def(
          "fomo_step",
          [](const Plan& plan, double local_loss, const Vector& candidate_losses, int norm_code, double eps,
             bool all_scores, bool update, double max_distance) -> py::object {
            const StepOptions options = step_options(norm_code, eps, all_scores, update, max_distance);
            if (update) plan.require_out();
            IntakeScope scope;
            if (!plan.current()) return py::none();
            return fomo_step_on(plan.layout(), scope.streams, options, local_loss, candidate_losses, py::none());
          },
          py::arg("local_loss"), py::arg("candidate_losses"), py::arg("norm"), py::arg("eps"), py::arg("all_scores"),
          py::arg("update"), py::arg("max_distance"));
}

}  // namespace python
}  // namespace fomo
