// The FedFomo ops over a run table that has been built already (by a call's intake, or by a plan).
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include "python/layout.h"

namespace fomo {
namespace python {

using Vector = py::array_t<double, py::array::c_style | py::array::forcecast>;

Norm norm_from(int code);
StepOptions step_options(int norm_code, double eps, bool all_scores, bool update);

// `result` / `results`: the device vectors of a CUDA call, None on the host (NumPy comes back).
py::object distances_on(const Layout& layout, const CudaStreams& streams, Norm norm, py::handle result);
void update_on(const Layout& layout, const CudaStreams& streams, const Vector& weights);
py::tuple step_on(const Layout& layout, const CudaStreams& streams, const StepOptions& options, double local_loss,
                  const Vector& candidate_losses, py::handle results);

}  // namespace python
}  // namespace fomo
