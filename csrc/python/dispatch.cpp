#include "python/dispatch.h"

#include "fomo/check.h"

namespace fomo {
namespace python {
namespace {

void require_cpu(const Layout& layout) {
  if (layout.device.kind != DeviceKind::cpu)
    fail_value("the arrays are on ", layout.device.str(), " but this build of fomo_core has no CUDA kernels "
               "(rebuild with a CUDA toolkit on the PATH and FOMO_CUDA=ON)");
}

}  // namespace

void run_distances(const Layout& layout, Norm norm, const uint8_t* measure, double* distances) {
  require_cpu(layout);
  cpu::candidate_distances(layout.model_runs(), norm, measure, distances);
}

void run_update(const Layout& layout, const double* weights) {
  require_cpu(layout);
  cpu::apply_update(layout.model_runs(), weights);
}

void run_step(const Layout& layout, const StepOptions& options, double local_loss,
              const double* candidate_losses, StepResult result) {
  require_cpu(layout);
  cpu::fomo_step(layout.model_runs(), options, local_loss, candidate_losses, result);
}

bool cuda_built() { return false; }
int cuda_device_count() { return 0; }

}  // namespace python
}  // namespace fomo

// ---- dense evaluation (issue 4; csrc/python/evaluate.cpp) ----
namespace fomo {
namespace python {

void run_evaluate_dense(const Device& device, const DenseNet& net, const DenseCandidates& candidates,
                        const DenseData& data, DenseResult result) {
  if (device.kind != DeviceKind::cpu)
    fail_value("the arrays are on ", device.str(), " but this build of fomo_core has no CUDA route for the dense "
               "evaluation (rebuild with a CUDA toolkit on the PATH and FOMO_CUDA=ON)");
  cpu::evaluate_dense(net, candidates, data, result);
}

}  // namespace python
}  // namespace fomo
// ---- end dense evaluation ----
