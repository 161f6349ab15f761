// Bindings of the batched candidate evaluation (fomo_core.evaluate_candidates).
#include <pybind11/pybind11.h>

namespace fomo {
namespace python {

void bind_evaluate(pybind11::module_& m) { (void)m; }

}  // namespace python
}  // namespace fomo
