#include "python/layout.h"

#include <algorithm>

#include "fomo/check.h"

namespace fomo {
namespace python {

ModelRuns Layout::model_runs() const {
  ModelRuns m;
  m.num_runs = int64_t(runs.size());
  m.num_candidates = num_candidates;
  m.runs = runs.data();
  m.candidate = candidate.data();
  m.candidate_stride = candidate_stride.data();
  m.total_elements = total_elements;
  return m;
}

namespace {

struct Leaves {
  std::vector<ArrayView> local, out;
  std::vector<std::vector<ArrayView>> candidates;  // [M][L]
  std::vector<std::string> suffix;                 // each leaf's path, e.g. ["fc.weight"]

  std::string local_name(size_t l) const { return "local_params" + suffix[l]; }
  std::string out_name(size_t l) const { return "out" + suffix[l]; }
  std::string candidate_name(size_t m, size_t l) const {
    return "candidate_params[" + std::to_string(m) + "]" + suffix[l];
  }
};

bool overlaps(const ArrayView& a, const ArrayView& b) {
  const auto x = a.extent(), y = b.extent();
  return x.first < x.second && y.first < y.second && x.first < y.second && y.first < x.second;
}

// Whether two elements of the view share memory (a broadcast/expanded tensor, an as_strided view):
// writing such an output would overwrite results element over element. Sorting the dimensions by
// stride, each must step past everything the smaller ones span.
bool self_overlapping(const ArrayView& v) {
  if (v.numel() == 0) return false;
  std::vector<std::pair<int64_t, int64_t>> dims;  // (|stride|, size)
  for (size_t d = 0; d < v.shape.size(); ++d)
    if (v.shape[d] > 1) dims.push_back({v.strides[d] < 0 ? -v.strides[d] : v.strides[d], v.shape[d]});
  std::sort(dims.begin(), dims.end());
  int64_t span = 0;  // elements covered by the dimensions so far, minus one
  for (const auto& [stride, size] : dims) {
    if (stride <= span) return true;
    span += stride * (size - 1);
  }
  return false;
}

bool same_view(const ArrayView& a, const ArrayView& b) {
  return a.data == b.data && a.shape == b.shape && a.strides == b.strides;
}

void check_like(const ArrayView& v, const std::string& name, const ArrayView& ref, const std::string& ref_name) {
  // Never converted here: that would copy the whole model. The message says where to do it.
  if (!v.floating || v.dtype != ref.dtype) {
    const bool torch_names = ref.dtype_name.rfind("torch.", 0) == 0;
    const std::string conversion =
        torch_names ? ".to(" + ref.dtype_name + ")" : ".astype(numpy." + ref.dtype_name + ")";
    fail_type(name, " has dtype ", v.dtype_name, ", expected ", ref.dtype_name, " (the dtype of ", ref_name,
              "): models are never copied to convert them; convert it once where it arrives (", conversion, ")");
  }
  if (v.shape != ref.shape)
    fail_value(name, " has shape ", v.shape_str(), ", expected ", ref.shape_str(), " (the shape of ", ref_name, ")");
  if (v.device != ref.device)
    fail_value(name, " is on ", v.device.str(), ", expected ", ref.device.str(), " (the device of ", ref_name, ")");
}

// intake(), noting what it read when the request asks (plans keep it to recheck later calls).
ArrayView read(const LayoutRequest& request, py::handle object, const std::string& what) {
  ArrayView view = intake(object, what);
  if (request.seen) request.seen->push_back({object, view});
  return view;
}

// Names are built only where a message needs them: this runs once per leaf per model per call.
Leaves read_leaves(const LayoutRequest& request) {
  Leaves leaves;
  const py::list local = py::reinterpret_borrow<py::list>(request.local);
  const py::list names = py::reinterpret_borrow<py::list>(request.names);
  const size_t num_leaves = local.size();
  for (size_t l = 0; l < num_leaves; ++l) leaves.suffix.push_back(names[l].cast<std::string>());
  for (size_t l = 0; l < num_leaves; ++l) {
    ArrayView v = read(request, local[l], leaves.local_name(l));
    if (!v.floating)
      fail_type(leaves.local_name(l), " has dtype ", v.dtype_name, "; expected float32, float64, float16 or bfloat16");
    if (l > 0 && v.device != leaves.local[0].device)
      fail_value(leaves.local_name(l), " is on ", v.device.str(), ", expected ", leaves.local[0].device.str(),
                 " (the device of ", leaves.local_name(0), ")");
    leaves.local.push_back(std::move(v));
  }

  if (py::isinstance<py::list>(request.candidates) || py::isinstance<py::tuple>(request.candidates)) {
    const py::sequence models = py::reinterpret_borrow<py::sequence>(request.candidates);
    const size_t num_models = models.size();
    leaves.candidates.resize(num_models);
    for (size_t m = 0; m < num_models; ++m) {
      const py::list model = models[m].cast<py::list>();
      std::vector<ArrayView>& views = leaves.candidates[m];
      views.reserve(num_leaves);
      for (size_t l = 0; l < num_leaves; ++l) {
        views.push_back(read(request, model[l], leaves.candidate_name(m, l)));
        if (!views.back().floating || views.back().dtype != leaves.local[l].dtype ||
            views.back().shape != leaves.local[l].shape || views.back().device != leaves.local[l].device)
          check_like(views.back(), leaves.candidate_name(m, l), leaves.local[l], leaves.local_name(l));
      }
    }
  } else {
    const ArrayView block = read(request, request.candidates, "candidate_params");
    if (num_leaves != 1 || leaves.local[0].shape.size() != 1)
      fail_value(
          "candidate_params is one array, which needs local_params to be one flat 1-D array; "
          "give a list of models instead");
    if (block.shape.size() != 2)
      fail_value("candidate_params has shape ", block.shape_str(), ", expected (M, ", leaves.local[0].shape[0],
                 ") (M candidates of local_params' size)");
    for (int64_t m = 0; m < block.shape[0]; ++m) {
      leaves.candidates.push_back({block.row(m)});
      check_like(leaves.candidates.back()[0], leaves.candidate_name(size_t(m), 0), leaves.local[0],
                 leaves.local_name(0));
    }
  }

  if (!request.out.is_none()) {
    const py::list out = py::reinterpret_borrow<py::list>(request.out);
    for (size_t l = 0; l < num_leaves; ++l) {
      leaves.out.push_back(read(request, out[l], leaves.out_name(l)));
      check_like(leaves.out.back(), leaves.out_name(l), leaves.local[l], leaves.local_name(l));
      if (leaves.out.back().readonly) fail_value(leaves.out_name(l), " is read-only");
      if (self_overlapping(leaves.out.back()))
        fail_value(leaves.out_name(l),
                   " has elements that share memory (a broadcast or expanded view); "
                   "the output needs one memory location per element");
    }
  }
  return leaves;
}

// out may be local itself (in place) but must not otherwise share memory with anything the call
// reads or writes: the update would read values it has already overwritten.
void check_out_overlaps(const Leaves& leaves) {
  for (size_t l = 0; l < leaves.out.size(); ++l) {
    const ArrayView& o = leaves.out[l];
    for (size_t k = 0; k < leaves.local.size(); ++k) {
      if (k == l && same_view(o, leaves.local[k])) continue;
      if (overlaps(o, leaves.local[k]))
        fail_value(leaves.out_name(l), " overlaps ", leaves.local_name(k),
                   " without being the same array; pass out=local_params to update in place, or a separate buffer");
    }
    for (size_t k = 0; k < l; ++k)
      if (overlaps(o, leaves.out[k])) fail_value(leaves.out_name(l), " overlaps ", leaves.out_name(k));
    for (size_t m = 0; m < leaves.candidates.size(); ++m)
      for (size_t k = 0; k < leaves.candidates[m].size(); ++k)
        if (overlaps(o, leaves.candidates[m][k]))
          fail_value(leaves.out_name(l), " overlaps ", leaves.candidate_name(m, k),
                     "; the output must not share memory with a candidate");
  }
}

// A dimension of a leaf, with its stride in each array (local, [out], candidates...).
struct Dim {
  int64_t size;
  std::vector<int64_t> stride;
};

int64_t magnitude(int64_t v) { return v < 0 ? -v : v; }

// A run whose elements every array reads contiguously is worth keeping even when it is short; a
// strided one is chosen as long as possible, since each run costs a table entry per candidate.
constexpr int64_t kShortestContiguousRun = 256;

// The leaf's dimensions in the local model's memory order (largest stride first), merged wherever
// every array steps through two neighbours as through one: a contiguous leaf becomes one run, and
// so does a Fortran-order or transposed leaf that the other arrays share. The last dimension left
// becomes the run unless it is short and not contiguous in every array; then the longest one does,
// so that arrays of different layouts cost at most numel / (longest dimension) runs, never one per
// short row.
std::vector<Dim> run_dimensions(const std::vector<const ArrayView*>& arrays) {
  const ArrayView& x = *arrays[0];
  std::vector<Dim> dims;
  for (size_t d = 0; d < x.shape.size(); ++d) {
    if (x.shape[d] == 1) continue;
    Dim dim{x.shape[d], {}};
    for (const ArrayView* a : arrays) dim.stride.push_back(a->strides[d]);
    dims.push_back(std::move(dim));
  }
  std::stable_sort(dims.begin(), dims.end(),
                   [](const Dim& a, const Dim& b) { return magnitude(a.stride[0]) > magnitude(b.stride[0]); });
  std::vector<Dim> merged;
  for (Dim& dim : dims) {
    if (!merged.empty()) {
      Dim& outer = merged.back();
      bool mergeable = true;
      for (size_t a = 0; a < arrays.size(); ++a) mergeable = mergeable && outer.stride[a] == dim.stride[a] * dim.size;
      if (mergeable) {
        outer.size *= dim.size;
        outer.stride = dim.stride;
        continue;
      }
    }
    merged.push_back(std::move(dim));
  }
  if (merged.empty()) merged.push_back(Dim{1, std::vector<int64_t>(arrays.size(), 1)});
  const Dim& last = merged.back();
  bool contiguous = true;
  for (int64_t s : last.stride) contiguous = contiguous && s == 1;
  if (!(contiguous && last.size >= kShortestContiguousRun)) {
    size_t longest = merged.size() - 1;
    for (size_t d = 0; d < merged.size(); ++d)
      if (merged[d].size > merged[longest].size) longest = d;
    std::rotate(merged.begin() + longest, merged.begin() + longest + 1, merged.end());
  }
  return merged;
}

// Emits the leaf as runs along its run dimension (the last of run_dimensions), one per position of
// the others.
void append_runs(Layout& layout, const std::vector<const ArrayView*>& arrays, bool has_out) {
  const ArrayView& x = *arrays[0];
  if (x.numel() == 0) return;
  std::vector<Dim> dims = run_dimensions(arrays);
  const Dim inner = dims.back();
  dims.pop_back();
  int64_t num_rows = 1;
  for (const Dim& d : dims) num_rows *= d.size;
  const size_t first_candidate = has_out ? 2 : 1;
  std::vector<int64_t> offset(arrays.size());
  for (int64_t r = 0; r < num_rows; ++r) {
    std::fill(offset.begin(), offset.end(), 0);
    int64_t rest = r;
    for (int64_t d = int64_t(dims.size()) - 1; d >= 0; --d) {
      const int64_t index = rest % dims[d].size;
      rest /= dims[d].size;
      for (size_t a = 0; a < arrays.size(); ++a) offset[a] += index * dims[d].stride[a];
    }
    auto at = [&](size_t a) { return static_cast<char*>(arrays[a]->data) + offset[a] * x.itemsize; };
    Run run{x.dtype, inner.size, at(0), inner.stride[0], nullptr, 0};
    if (has_out) {
      run.out = at(1);
      run.out_stride = inner.stride[1];
    }
    layout.runs.push_back(run);
    for (size_t a = first_candidate; a < arrays.size(); ++a) {
      layout.candidate.push_back(at(a));
      layout.candidate_stride.push_back(inner.stride[a]);
    }
    layout.total_elements += inner.size;
  }
}

}  // namespace

Layout build_layout(const LayoutRequest& request) {
  const Leaves leaves = read_leaves(request);
  check_out_overlaps(leaves);
  Layout layout;
  layout.num_candidates = int64_t(leaves.candidates.size());
  if (!leaves.local.empty()) layout.device = leaves.local[0].device;
  const bool has_out = !leaves.out.empty();
  for (size_t l = 0; l < leaves.local.size(); ++l) {
    std::vector<const ArrayView*> arrays{&leaves.local[l]};
    if (has_out) arrays.push_back(&leaves.out[l]);
    for (const auto& model : leaves.candidates) arrays.push_back(&model[l]);
    append_runs(layout, arrays, has_out);
  }
  return layout;
}

}  // namespace python
}  // namespace fomo
