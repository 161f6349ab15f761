// Bindings of the three step ops, _C.candidate_distances, _C.apply_update and _C.fomo_step, and the
// constants they share with Python (_C.STATUS, _C.NORMS, _C.CHUNK_ELEMENTS, from fomo/ops.h): Python
// models in, float64 vectors out: NumPy vectors for CPU arrays, and for CUDA arrays the device
// vectors the Python layer allocated and passed in (results stay on the device).
// fomo_core/ops.py flattens structures, checks the scalar arguments (norm name, eps, max_distance,
// losses) and shapes the results; this layer checks what needs the run table (one value per
// candidate, result vectors on the right device, weights the models' compute type can hold).
#include "python/ops.h"

#include <cfloat>
#include <cmath>

#include "fomo/check.h"
#include "python/dispatch.h"

namespace fomo {
namespace python {

Norm norm_from(int code) {
  for (const NormName& known : kNormNames)
    if (code == int(known.norm)) return known.norm;
  fail_value("norm code ", code, " is none of fomo_core._C.NORMS");
}

StepOptions step_options(int norm_code, double eps, bool all_scores, bool update, double max_distance) {
  StepOptions options;
  options.norm = norm_from(norm_code);
  options.eps = eps;
  options.all_scores = all_scores;
  options.update = update;
  options.max_distance = max_distance;
  return options;
}

namespace {

void check_length(const Vector& v, const Layout& layout, const char* name) {
  if (v.ndim() != 1 || v.shape(0) != layout.num_candidates)
    fail_value(name, " has ", v.ndim() == 1 ? concat("length ", v.shape(0)) : concat(v.ndim(), " dimensions"),
               ", expected one value per candidate (", layout.num_candidates, ")");
}

// A result vector that Python allocated on the call's CUDA device: 1-D, one contiguous element per
// candidate, float64 (or uint8 for the status). Returns its device pointer.
void* device_result(py::handle obj, const Layout& layout, const char* name, bool status) {
  const ArrayView v = intake(obj, name);
  const bool typed = status ? (!v.floating && v.itemsize == 1) : (v.floating && v.dtype == DType::float64);
  if (!typed) fail_type(name, " has dtype ", v.dtype_name, ", expected ", status ? "uint8" : "float64");
  if (v.shape.size() != 1 || v.shape[0] != layout.num_candidates || (v.shape[0] > 1 && v.strides[0] != 1))
    fail_value(name, " has shape ", v.shape_str(), ", expected a contiguous (", layout.num_candidates, ",)");
  if (v.device != layout.device) fail_value(name, " is on ", v.device.str(), ", expected ", layout.device.str());
  if (v.readonly) fail_value(name, " is read-only");
  return v.data;
}

[[noreturn]] void fail_missing_results(const Layout& layout) {
  fail_value("the arrays are on ", layout.device.str(),
             "; a CUDA call needs its result vectors allocated on that "
             "device (fomo_core.ops passes them)");
}

}  // namespace

py::object candidate_distances_on(const Layout& layout, const CudaStreams& streams, Norm norm, py::handle result) {
  std::vector<uint8_t> measure(size_t(layout.num_candidates), 1);
  if (layout.device.kind == DeviceKind::cuda) {
    if (result.is_none()) fail_missing_results(layout);
    double* out = static_cast<double*>(device_result(result, layout, "distances", false));
    py::gil_scoped_release unlocked;
    candidate_distances(layout, streams, norm, measure.data(), out);
    return py::reinterpret_borrow<py::object>(result);
  }
  Vector host(layout.num_candidates);
  {
    py::gil_scoped_release unlocked;
    candidate_distances(layout, streams, norm, measure.data(), host.mutable_data());
  }
  return std::move(host);
}

void apply_update_on(const Layout& layout, const CudaStreams& streams, const Vector& weights) {
  check_length(weights, layout, "weights");
  // float32, float16 and bfloat16 models are updated in float32 registers: a weight beyond float32's
  // range would become infinite there (and 0 * inf a NaN), so it is refused rather than mis-computed.
  bool float32_compute = false;
  for (const Run& run : layout.runs) float32_compute = float32_compute || run.dtype != DType::float64;
  for (py::ssize_t m = 0; m < weights.shape(0); ++m) {
    const double w = weights.at(m);
    if (!std::isfinite(w)) fail_value("weights[", m, "] is ", w, "; every weight must be finite");
    if (float32_compute && std::fabs(w) > double(FLT_MAX))
      fail_value("weights[", m, "] is ", w, ", beyond float32's range (", double(FLT_MAX),
                 "), in which models of "
                 "float32, float16 and bfloat16 are updated");
  }
  py::gil_scoped_release unlocked;
  apply_update(layout, streams, weights.data());
}

py::tuple fomo_step_on(const Layout& layout, const CudaStreams& streams, const StepOptions& options, double local_loss,
                       const Vector& candidate_losses, py::handle results) {
  check_length(candidate_losses, layout, "candidate_losses");
  const py::ssize_t m = layout.num_candidates;
  if (layout.device.kind == DeviceKind::cuda) {
    if (results.is_none()) fail_missing_results(layout);
    const py::tuple given = py::reinterpret_borrow<py::tuple>(results);
    if (given.size() != 4) fail_value("results must be (weights, scores, distances, status)");
    const StepResult device{static_cast<double*>(device_result(given[0], layout, "weights", false)),
                            static_cast<double*>(device_result(given[1], layout, "scores", false)),
                            static_cast<double*>(device_result(given[2], layout, "distances", false)),
                            static_cast<uint8_t*>(device_result(given[3], layout, "status", true))};
    {
      py::gil_scoped_release unlocked;
      fomo_step(layout, streams, options, local_loss, candidate_losses.data(), device);
    }
    return given;
  }
  Vector weights(m), scores(m), dists(m);
  py::array_t<uint8_t> status(m);
  {
    py::gil_scoped_release unlocked;
    fomo_step(layout, streams, options, local_loss, candidate_losses.data(),
              {weights.mutable_data(), scores.mutable_data(), dists.mutable_data(), status.mutable_data()});
  }
  return py::make_tuple(weights, scores, dists, status);
}

namespace {

py::object bind_candidate_distances(py::handle local, py::handle candidates, py::handle names, int norm_code,
                                    py::handle result) {
  const Norm norm = norm_from(norm_code);
  IntakeScope scope;
  const Layout layout = build_layout({local, candidates, py::none(), names});
  return candidate_distances_on(layout, scope.streams, norm, result);
}

void bind_apply_update(py::handle local, py::handle candidates, py::handle out, py::handle names,
                       const Vector& weights) {
  IntakeScope scope;
  const Layout layout = build_layout({local, candidates, out, names});
  apply_update_on(layout, scope.streams, weights);
}

py::tuple bind_fomo_step(py::handle local, py::handle candidates, py::handle out, py::handle names, double local_loss,
                         const Vector& candidate_losses, int norm_code, double eps, bool all_scores, py::handle results,
                         double max_distance) {
  const StepOptions options = step_options(norm_code, eps, all_scores, !out.is_none(), max_distance);
  IntakeScope scope;
  const Layout layout = build_layout({local, candidates, out, names});
  return fomo_step_on(layout, scope.streams, options, local_loss, candidate_losses, results);
}

}  // namespace

void bind_ops(py::module_& m) {
  m.def("candidate_distances", &bind_candidate_distances, py::arg("local"), py::arg("candidates"), py::arg("names"),
        py::arg("norm"), py::arg("result") = py::none());
  m.def("apply_update", &bind_apply_update, py::arg("local"), py::arg("candidates"), py::arg("out"), py::arg("names"),
        py::arg("weights"));
  m.def("fomo_step", &bind_fomo_step, py::arg("local"), py::arg("candidates"), py::arg("out"), py::arg("names"),
        py::arg("local_loss"), py::arg("candidate_losses"), py::arg("norm"), py::arg("eps"), py::arg("all_scores"),
        py::arg("results") = py::none(), py::arg("max_distance") = INFINITY);

  py::dict status, norms;
  for (const StatusName& s : kStatusNames) status[s.name] = int(s.status);
  for (const NormName& n : kNormNames) norms[n.name] = int(n.norm);
  m.attr("STATUS") = status;
  m.attr("NORMS") = norms;
  m.attr("CHUNK_ELEMENTS") = kChunkElements;
}

}  // namespace python
}  // namespace fomo
