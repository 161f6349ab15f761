// Bindings of the batched candidate evaluation (fomo_core.evaluate_candidates): arrays in, the
// kernels' tables out; results as NumPy float64 vectors for host arrays and, for CUDA arrays, in
// the device vectors the Python layer allocated (results stay on the device). Nothing here does
// maths. Who checks what: fomo_core/dense.py the spec (DenseSpec), the argument types and the
// values of y and sample_weight (which it converts); this file the codes, and the shapes, dtypes
// and devices of every array; the kernels trust both.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>
#include <vector>

#include "fomo/check.h"
#include "fomo/dense.h"
#include "python/dispatch.h"
#include "python/intake.h"

namespace fomo {
namespace python {
namespace {

using Vector = py::array_t<double, py::array::c_style | py::array::forcecast>;

const char* dtype_label(DType d) {
  switch (d) {
    case DType::float32: return "float32";
    case DType::float64: return "float64";
    case DType::float16: return "float16";
    case DType::bfloat16: return "bfloat16";
  }
  return "?";
}

// The network's shape and the rules for reading a candidate's layers.
struct Shape {
  std::vector<int64_t> sizes;
  bool in_out = false;  // weights stored [n_in, n_out] (scikit-learn, Keras) instead of [n_out, n_in]
  int64_t params_ = 0;  // set once by count_params(), overflow-checked
  int64_t layers() const { return int64_t(sizes.size()) - 1; }
  int64_t params() const { return params_; }
  void count_params() { params_ = dense_param_count(layers(), sizes.data()); }
};

// Collects every candidate's layer table while checking that all share one dtype and device.
class CandidateTable {
 public:
  explicit CandidateTable(const Shape& shape) : shape_(shape) {}

  void add_flat(const ArrayView& v, const std::string& what) {
    check_floating(v, what);
    if (v.shape.size() != 1 || v.shape[0] != shape_.params())
      fail_value(what, " has shape ", v.shape_str(), ", expected (", shape_.params(),
                 ",) (the flat parameters of the network)");
    const int64_t s = v.strides[0];
    const char* base = static_cast<const char*>(v.data);
    int64_t at = 0;
    for (int64_t l = 0; l < shape_.layers(); ++l) {
      const int64_t n_in = shape_.sizes[l], n_out = shape_.sizes[l + 1];
      DenseLayerParams p;
      p.weight = base + at * s * v.itemsize;
      p.row_stride = shape_.in_out ? s : n_in * s;
      p.col_stride = shape_.in_out ? n_out * s : s;
      at += n_in * n_out;
      p.bias = base + at * s * v.itemsize;
      p.bias_stride = s;
      at += n_out;
      layers_.push_back(p);
    }
    ++count_;
  }

  void add_layers(py::sequence seq, const std::string& what) {
    const int64_t expected = 2 * shape_.layers();
    if (int64_t(py::len(seq)) != expected)
      fail_value(what, " has ", py::len(seq), " arrays, expected ", expected, " (weight and bias of each of ",
                 shape_.layers(), " layers)");
    for (int64_t l = 0; l < shape_.layers(); ++l) {
      const int64_t n_in = shape_.sizes[l], n_out = shape_.sizes[l + 1];
      const std::string wname = concat(what, "[", 2 * l, "]"), bname = concat(what, "[", 2 * l + 1, "]");
      const ArrayView w = intake(seq[size_t(2 * l)], wname), b = intake(seq[size_t(2 * l + 1)], bname);
      check_floating(w, wname);
      check_floating(b, bname);
      const int64_t rows = shape_.in_out ? n_in : n_out, cols = shape_.in_out ? n_out : n_in;
      if (w.shape.size() != 2 || w.shape[0] != rows || w.shape[1] != cols)
        fail_value(wname, " has shape ", w.shape_str(), ", expected (", rows, ", ", cols, ") (layer ", l, " weight, ",
                   shape_.in_out ? "in_out" : "out_in", " layout)");
      if (b.shape.size() != 1 || b.shape[0] != n_out)
        fail_value(bname, " has shape ", b.shape_str(), ", expected (", n_out, ",) (layer ", l, " bias)");
      DenseLayerParams p;
      p.weight = w.data;
      p.row_stride = shape_.in_out ? w.strides[1] : w.strides[0];
      p.col_stride = shape_.in_out ? w.strides[0] : w.strides[1];
      p.bias = b.data;
      p.bias_stride = b.strides[0];
      layers_.push_back(p);
    }
    ++count_;
  }

  DenseCandidates view() const { return {dtype_, count_, layers_.data()}; }
  const Device& device() const { return device_; }
  bool any() const { return seen_; }

 private:
  void check_floating(const ArrayView& v, const std::string& what) {
    if (!v.floating) fail_type(what, " has dtype ", v.dtype_name, "; expected float32, float64, float16 or bfloat16");
    if (!seen_) {
      seen_ = true;
      dtype_ = v.dtype;
      device_ = v.device;
      first_ = what;
    } else if (v.dtype != dtype_) {
      fail_type(what, " has dtype ", v.dtype_name, " but ", first_, " has ", dtype_label(dtype_),
                "; every candidate array must have the same dtype");
    } else if (v.device != device_) {
      fail_value(what, " is on ", v.device.str(), " but ", first_, " is on ", device_.str());
    }
  }

  const Shape& shape_;
  std::vector<DenseLayerParams> layers_;
  int64_t count_ = 0;
  DType dtype_ = DType::float32;
  Device device_;
  std::string first_;
  bool seen_ = false;
};

// A C-contiguous int64 (floating = false) or float64 array of exactly `shape` on X's `device`;
// `expected` says what the shape means.
const void* contiguous_array(const ArrayView& v, const char* what, const std::vector<int64_t>& shape, bool floating,
                             const Device& device, const char* expected) {
  const bool right_type = floating
                              ? (v.floating && v.dtype == DType::float64)
                              : (!v.floating && v.itemsize == 8 && v.dtype_name.find("int64") != std::string::npos);
  if (!right_type) fail_type(what, " has dtype ", v.dtype_name, ", expected ", floating ? "float64" : "int64");
  if (v.shape != shape) fail_value(what, " has shape ", v.shape_str(), ", expected ", expected);
  int64_t stride = 1;
  for (int64_t d = int64_t(shape.size()) - 1; d >= 0; --d) {
    if (shape[d] > 1 && v.strides[d] != stride) fail_value(what, " must be C-contiguous");
    stride *= shape[d];
  }
  if (v.device != device) fail_value(what, " is on ", v.device.str(), " but X is on ", device.str());
  return v.data;
}

// Labels, targets or sample weights: one entry (or row) per row of X.
const void* side_array(py::handle obj, const char* what, const std::vector<int64_t>& shape, bool floating,
                       const Device& device) {
  return contiguous_array(intake(obj, what), what, shape, floating, device, "one entry per row of X");
}

// A result vector the Python layer allocated on the call's CUDA device.
double* result_array(py::handle obj, const char* what, const std::vector<int64_t>& shape, const Device& device) {
  const ArrayView v = intake(obj, what);
  if (v.readonly) fail_value(what, " is read-only");
  return static_cast<double*>(const_cast<void*>(contiguous_array(v, what, shape, true, device, "one per candidate")));
}

bool is_sequence(py::handle obj) { return py::isinstance<py::list>(obj) || py::isinstance<py::tuple>(obj); }

// A code of one of the tables of fomo/dense.h (what: the argument, for the message).
template <size_t N>
int32_t table_code(int code, const char* const (&names)[N], const std::string& what) {
  if (code < 0 || size_t(code) >= N) fail_value(what, " is ", code, ", not a code of the table (0 to ", N - 1, ")");
  return int32_t(code);
}

// The arguments come from a DenseSpec, which checked the widths, the names and their number.
py::tuple evaluate_candidates_binding(std::vector<int64_t> sizes, std::vector<int> activation_codes, bool in_out,
                                      int output_code, py::handle candidates, py::handle x, py::handle labels,
                                      py::handle targets, py::handle sample_weight, py::handle results) {
  IntakeScope scope;  // keeps DLPack exports alive and collects the CUDA streams of the arrays
  Shape shape{sizes, in_out};
  std::vector<Activation> activations;
  for (size_t l = 0; l < activation_codes.size(); ++l)
    activations.push_back(
        Activation(table_code(activation_codes[l], kActivationNames, concat("activations[", l, "]"))));
  const DenseOutput output = DenseOutput(table_code(output_code, kDenseOutputNames, "output"));
  const DenseNet net{shape.layers(), shape.sizes.data(), activations.data(), output};
  shape.count_params();

  const ArrayView xv = intake(x, "X");
  if (!xv.floating) fail_type("X has dtype ", xv.dtype_name, "; expected float32, float64, float16 or bfloat16");
  if (xv.shape.size() != 2 || xv.shape[1] != sizes[0])
    fail_value("X has shape ", xv.shape_str(), ", expected (B, ", sizes[0], ")");
  const int64_t rows = xv.shape[0];

  CandidateTable table(shape);
  if (is_sequence(candidates)) {
    py::sequence seq = py::reinterpret_borrow<py::sequence>(candidates);
    for (size_t m = 0; m < py::len(seq); ++m) {
      const std::string what = concat("candidate_params[", m, "]");
      if (is_sequence(seq[m]))
        table.add_layers(py::reinterpret_borrow<py::sequence>(seq[m]), what);
      else
        table.add_flat(intake(seq[m], what), what);
    }
  } else {
    const ArrayView all = intake(candidates, "candidate_params");
    if (all.shape.size() != 2)
      fail_value("candidate_params has shape ", all.shape_str(), ", expected (M, ", shape.params(),
                 ") (one flat parameter vector per row)");
    if (all.shape[1] != shape.params())
      fail_value("candidate_params has shape ", all.shape_str(), ", expected (M, ", shape.params(),
                 ") for a network of sizes ", py::str(py::cast(sizes)).cast<std::string>());
    if (!all.floating)
      fail_type("candidate_params has dtype ", all.dtype_name, "; expected float32, float64, float16 or bfloat16");
    for (int64_t m = 0; m < all.shape[0]; ++m) table.add_flat(all.row(m), concat("candidate_params[", m, "]"));
  }
  if (table.any() && table.device() != xv.device)
    fail_value("X is on ", xv.device.str(), " but the candidates are on ", table.device().str());

  DenseData data;
  data.rows = rows;
  data.dtype = xv.dtype;
  data.x = xv.data;
  data.row_stride = xv.strides[0];
  data.col_stride = xv.strides[1];
  // Labels, targets and weights are small arrays prepared by fomo_core/dense.py on X's device.
  const bool regression = output == DenseOutput::squared_error;
  if (regression ? targets.is_none() : labels.is_none())
    fail_value("y: output '", kDenseOutputNames[output_code], "' needs ",
               regression ? "float targets" : "integer class labels");
  if (!regression)
    data.labels = static_cast<const int64_t*>(side_array(labels, "y", {rows}, false, xv.device));
  else
    data.targets = static_cast<const double*>(side_array(targets, "y", {rows, sizes.back()}, true, xv.device));
  if (!sample_weight.is_none())
    data.sample_weight =
        static_cast<const double*>(side_array(sample_weight, "sample_weight", {rows}, true, xv.device));

  const DenseCandidates cands = table.view();
  check_dense_sizes(net, cands.count, rows);  // before either back end's plan multiplies them
  const std::vector<int64_t> per_candidate{cands.count};
  if (xv.device.kind == DeviceKind::cuda) {
    if (results.is_none())
      fail_value("the arrays are on ", xv.device.str(),
                 "; a CUDA call needs its result vectors allocated on that "
                 "device (fomo_core.dense passes them)");
    const py::tuple given = py::reinterpret_borrow<py::tuple>(results);
    if (given.size() != 2) fail_value("results must be (loss, accuracy)");
    const DenseResult device{result_array(given[0], "loss", per_candidate, xv.device),
                             result_array(given[1], "accuracy", per_candidate, xv.device)};
    {
      py::gil_scoped_release unlocked;
      evaluate_candidates(xv.device, scope.streams, net, cands, data, device);
    }
    return py::make_tuple(given[0], given[1]);
  }
  Vector loss(cands.count), accuracy(cands.count);
  {
    py::gil_scoped_release unlocked;
    evaluate_candidates(xv.device, scope.streams, net, cands, data, {loss.mutable_data(), accuracy.mutable_data()});
  }
  return py::make_tuple(loss, accuracy);
}

// name -> code of one of the tables of fomo/dense.h, in code order.
template <size_t N>
py::dict code_table(const char* const (&names)[N]) {
  py::dict table;
  for (size_t code = 0; code < N; ++code) table[names[code]] = int(code);
  return table;
}

}  // namespace

void bind_evaluate_candidates(py::module_& m) {
  m.def("evaluate_candidates", &evaluate_candidates_binding, py::arg("sizes"), py::arg("activations"),
        py::arg("in_out"), py::arg("output"), py::arg("candidates"), py::arg("X"), py::arg("labels"),
        py::arg("targets"), py::arg("sample_weight"), py::arg("results") = py::none());
  m.attr("ACTIVATIONS") = code_table(kActivationNames);
  m.attr("OUTPUTS") = code_table(kDenseOutputNames);
}

}  // namespace python
}  // namespace fomo
