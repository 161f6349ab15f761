// fomo_core._math_checks, a test-only module (built with FOMO_TEST_HOOKS=ON, never shipped): the
// element maths of csrc/fomo/math.h (the code the CUDA kernels run on the device and the CPU kernels
// on the host) exposed to the tests, so that a machine without a GPU still checks every conversion
// and score rule the GPU uses. The status codes come from fomo_core._C.STATUS like everywhere else.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include "fomo/math.h"

namespace py = pybind11;

namespace fomo {
namespace testing {
namespace {

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
}  // namespace testing
}  // namespace fomo

PYBIND11_MODULE(_math_checks, m) {
  using namespace fomo;
  using namespace fomo::testing;
  m.doc() = "math.h element maths, for the tests";
  using Bits = py::array_t<uint16_t, py::array::c_style | py::array::forcecast>;
  using Floats = py::array_t<float, py::array::c_style | py::array::forcecast>;
  m.def("half_to_float",
        [](const Bits& b) { return map<uint16_t, float>(b, [](uint16_t h) { return half_to_float(h); }); });
  m.def("float_to_half",
        [](const Floats& f) { return map<float, uint16_t>(f, [](float x) { return float_to_half(x); }); });
  m.def("bf16_to_float",
        [](const Bits& b) { return map<uint16_t, float>(b, [](uint16_t h) { return bf16_to_float(h); }); });
  m.def("float_to_bf16",
        [](const Floats& f) { return map<float, uint16_t>(f, [](float x) { return float_to_bf16(x); }); });
  m.def("first_order_score", &score, py::arg("local_loss"), py::arg("candidate_loss"), py::arg("distance"),
        py::arg("eps"), py::arg("measured"), py::arg("max_distance") = INFINITY);
  m.def("normalise_weights", &weights, py::arg("scores"), py::arg("status"));
  m.def(
      "needs_distance", [](bool all_scores, double l0, double ln) { return needs_distance(all_scores, l0, ln); },
      py::arg("all_scores"), py::arg("local_loss"), py::arg("candidate_loss"));
}
