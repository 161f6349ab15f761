// From Python models (lists of leaf arrays) to the kernels' run table, with every argument checked
// before anything is written. Error messages name the argument by its path, e.g.
// `candidate_params[3]["fc.weight"] has shape (10, 84), expected (10, 120)`.
#pragma once

#include <pybind11/pybind11.h>

#include <string>
#include <vector>

#include "fomo/ops.h"
#include "python/intake.h"

namespace fomo {
namespace python {

// Everything a kernel call needs, owning the run and candidate tables.
struct Layout {
  std::vector<Run> runs;
  std::vector<const void*> candidate;
  std::vector<int64_t> candidate_stride;
  int64_t num_candidates = 0;
  int64_t total_elements = 0;
  Device device;
  ModelRuns model_runs() const;
};

// One array as intake read it (what a plan compares on later calls).
struct IntakeRecord {
  py::handle object;
  ArrayView view;
};

struct LayoutRequest {
  py::handle local;                           // list of leaf arrays
  py::handle candidates;                      // list (one per candidate) of lists of leaves, or one 2-D array
  py::handle out;                             // list of leaf arrays, or None for read-only ops
  py::handle names;                           // list of str: each leaf's path suffix ('' for a flat model)
  std::vector<IntakeRecord>* seen = nullptr;  // when set, receives every array read, in order
};

Layout build_layout(const LayoutRequest& request);

}  // namespace python
}  // namespace fomo
