// The three step ops over a run table that has been built already (by a call's intake, or by a plan):
// the bodies of the bindings _C.candidate_distances, _C.apply_update and _C.fomo_step (ops.cpp) and
// of the Plan methods of the same names (plan.cpp).
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include "python/layout.h"

namespace fomo {
namespace python {

using Vector = py::array_t<double, py::array::c_style | py::array::forcecast>;

Norm norm_from(int code);
// eps and max_distance (the guard: candidates farther are rejected; infinity turns it off) arrive
// checked by fomo_core/ops.py.
StepOptions step_options(int norm_code, double eps, bool all_scores, bool update, double max_distance);

// `result` / `results`: the device vectors of a CUDA call, None on the host (NumPy comes back).
py::object candidate_distances_on(const Layout& layout, const CudaStreams& streams, Norm norm, py::handle result);
void apply_update_on(const Layout& layout, const CudaStreams& streams, const Vector& weights);
py::tuple fomo_step_on(const Layout& layout, const CudaStreams& streams, const StepOptions& options, double local_loss,
                       const Vector& candidate_losses, py::handle results);

}  // namespace python
}  // namespace fomo
