// fomo_core._C.math_checks: the element maths of csrc/fomo/math.h (the code the CUDA kernels run
// on the device and the CPU kernels on the host) exposed to the tests, so that a machine without a
// GPU still checks every conversion and score rule the GPU uses.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include "fomo/math.h"

namespace fomo {
namespace python {
namespace {

namespace py = pybind11;

template <class In, class Out, class F>
py::array_t<Out> map(const py::array_t<In, py::array::c_style | py::array::forcecast>& in, F f) {
  py::array_t<Out> out(in.size());
  const In* src = in.data();
  Out* dst = out.mutable_data();
  for (py::ssize_t i = 0; i < in.size(); ++i) dst[i] = f(src[i]);
  return out;
}

py::tuple score(double local_loss, double candidate_loss, double distance, double eps, bool measured,
                double max_distance) {
  uint8_t status = 255;
  const double s = first_order_score(local_loss, candidate_loss, distance, eps, max_distance, measured, &status);
  return py::make_tuple(s, int(status));
}

py::array_t<double> weights(const py::array_t<double, py::array::c_style | py::array::forcecast>& scores,
                            const py::array_t<uint8_t, py::array::c_style | py::array::forcecast>& status) {
  if (scores.size() != status.size()) throw py::value_error("scores and status must have the same length");
  py::array_t<double> out(scores.size());
  normalise_weights(scores.data(), status.data(), scores.size(), out.mutable_data());
  return out;
}

}  // namespace

void bind_math_checks(py::module_& m) {
  py::module_ sub = m.def_submodule("math_checks", "math.h element maths, for the tests");
  using Bits = py::array_t<uint16_t, py::array::c_style | py::array::forcecast>;
  using Floats = py::array_t<float, py::array::c_style | py::array::forcecast>;
  sub.def("half_to_float", [](const Bits& b) { return map<uint16_t, float>(b, [](uint16_t h) { return half_to_float(h); }); });
  sub.def("float_to_half", [](const Floats& f) { return map<float, uint16_t>(f, [](float x) { return float_to_half(x); }); });
  sub.def("bf16_to_float", [](const Bits& b) { return map<uint16_t, float>(b, [](uint16_t h) { return bf16_to_float(h); }); });
  sub.def("float_to_bf16", [](const Floats& f) { return map<float, uint16_t>(f, [](float x) { return float_to_bf16(x); }); });
  sub.def("first_order_score", &score, py::arg("local_loss"), py::arg("candidate_loss"), py::arg("distance"),
          py::arg("eps"), py::arg("measured"), py::arg("max_distance") = INFINITY);
  sub.def("normalise_weights", &weights, py::arg("scores"), py::arg("status"));
  sub.def("needs_distance", [](bool all_scores, double l0, double ln) { return needs_distance(all_scores, l0, ln); },
          py::arg("all_scores"), py::arg("local_loss"), py::arg("candidate_loss"));
  sub.attr("ACCEPTED") = int(kAccepted);
  sub.attr("REJECTED") = int(kRejected);
  sub.attr("SKIPPED") = int(kSkipped);
}

}  // namespace python
}  // namespace fomo
