// The extension module fomo_core._C: registers each group of bindings and the error translation.
#include <pybind11/pybind11.h>

#include "fomo/check.h"
#include "python/dispatch.h"

namespace py = pybind11;

namespace fomo {
namespace python {
void bind_ops(py::module_& m);
void bind_evaluate_candidates(py::module_& m);
void bind_plan(py::module_& m);
}  // namespace python
}  // namespace fomo

namespace {

py::dict build_info() {
  py::dict info;
  info["version"] = FOMO_VERSION;
  info["compiler"] = FOMO_COMPILER;
#if defined(FOMO_HAVE_OPENMP)
  info["openmp"] = true;
#else
  info["openmp"] = false;
#endif
  info["threads"] = fomo::cpu::max_threads();
  info["parallel_threshold"] = fomo::cpu::parallel_threshold();
  info["simd"] = fomo::cpu::isa_name();
  info["cuda"] = fomo::python::cuda_built();
#if defined(FOMO_CUDA_VERSION)
  info["cuda_version"] = FOMO_CUDA_VERSION;
  info["cuda_architectures"] = FOMO_CUDA_ARCHITECTURES;
#else
  info["cuda_version"] = py::none();
  info["cuda_architectures"] = py::none();
#endif
  info["cuda_devices"] = fomo::python::cuda_device_count();
  return info;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "fomo-core compiled kernels";
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const fomo::ArgumentError& e) {
      if (e.kind == fomo::ArgumentError::kType)
        PyErr_SetString(PyExc_TypeError, e.what());
      else
        PyErr_SetString(PyExc_ValueError, e.what());
    }
  });
  fomo::python::bind_ops(m);
  fomo::python::bind_evaluate_candidates(m);
  fomo::python::bind_plan(m);
  m.def("build_info", &build_info);
  m.def("set_num_threads", &fomo::cpu::set_num_threads, py::arg("n"));
  m.def("get_num_threads", &fomo::cpu::max_threads);
  m.def("has_cuda", [] { return fomo::python::cuda_device_count() > 0; });
}
