// Bindings of the FedFomo ops: Python models in, NumPy float64 vectors out. The Python layer
// (fomo_core/ops.py) flattens structures and shapes the results; nothing here does maths.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include "fomo/check.h"
#include "python/dispatch.h"
#include "python/layout.h"

namespace fomo {
namespace python {
namespace {

using Vector = py::array_t<double, py::array::c_style | py::array::forcecast>;

Norm norm_from(int code) {
  if (code != int(Norm::l2) && code != int(Norm::l1)) fail_value("norm code must be 0 (l2) or 1 (l1), got ", code);
  return Norm(code);
}

void check_length(const Vector& v, const Layout& layout, const char* name) {
  if (v.ndim() != 1 || v.shape(0) != layout.num_candidates)
    fail_value(name, " has ", v.ndim() == 1 ? concat("length ", v.shape(0)) : concat(v.ndim(), " dimensions"),
               ", expected one value per candidate (", layout.num_candidates, ")");
}

Vector distances(py::handle local, py::handle candidates, py::handle names, int norm_code) {
  const Norm norm = norm_from(norm_code);
  const Layout layout = build_layout({local, candidates, py::none(), names});
  Vector result(layout.num_candidates);
  std::vector<uint8_t> measure(size_t(layout.num_candidates), 1);
  {
    py::gil_scoped_release unlocked;
    run_distances(layout, norm, measure.data(), result.mutable_data());
  }
  return result;
}

void update(py::handle local, py::handle candidates, py::handle out, py::handle names, const Vector& weights) {
  const Layout layout = build_layout({local, candidates, out, names});
  check_length(weights, layout, "weights");
  for (py::ssize_t m = 0; m < weights.shape(0); ++m)
    if (!std::isfinite(weights.at(m))) fail_value("weights[", m, "] is ", weights.at(m), "; every weight must be finite");
  py::gil_scoped_release unlocked;
  run_update(layout, weights.data());
}

py::tuple step(py::handle local, py::handle candidates, py::handle out, py::handle names, double local_loss,
               const Vector& candidate_losses, int norm_code, double eps, bool all_scores) {
  StepOptions options;
  options.norm = norm_from(norm_code);
  options.eps = eps;
  options.all_scores = all_scores;
  options.update = !out.is_none();
  if (!(eps >= 0.0) || !std::isfinite(eps)) fail_value("eps must be a finite number >= 0, got ", eps);
  const Layout layout = build_layout({local, candidates, out, names});
  check_length(candidate_losses, layout, "candidate_losses");
  const py::ssize_t m = layout.num_candidates;
  Vector weights(m), scores(m), dists(m);
  py::array_t<uint8_t> status(m);
  {
    py::gil_scoped_release unlocked;
    run_step(layout, options, local_loss, candidate_losses.data(),
             {weights.mutable_data(), scores.mutable_data(), dists.mutable_data(), status.mutable_data()});
  }
  return py::make_tuple(weights, scores, dists, status);
}

}  // namespace

void bind_ops(py::module_& m) {
  m.def("distances", &distances, py::arg("local"), py::arg("candidates"), py::arg("names"), py::arg("norm"));
  m.def("update", &update, py::arg("local"), py::arg("candidates"), py::arg("out"), py::arg("names"),
        py::arg("weights"));
  m.def("step", &step, py::arg("local"), py::arg("candidates"), py::arg("out"), py::arg("names"),
        py::arg("local_loss"), py::arg("candidate_losses"), py::arg("norm"), py::arg("eps"), py::arg("all_scores"));
}

}  // namespace python
}  // namespace fomo
