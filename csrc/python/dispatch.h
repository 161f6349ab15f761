// Device dispatch, in one place: every op runs on the device its arrays live on (csrc/cpu or, in
// builds with CUDA, csrc/cuda on the call's stream); each function here has its op's name. For a
// CUDA layout every result pointer is device memory of that device; the per-candidate inputs
// (measure, weights, losses) stay host memory.
#pragma once

#include "fomo/dense.h"
#include "fomo/ops.h"
#include "python/intake.h"
#include "python/layout.h"

namespace fomo {
namespace python {

void candidate_distances(const Layout& layout, const CudaStreams& streams, Norm norm, const uint8_t* measure,
                         double* distances);
void apply_update(const Layout& layout, const CudaStreams& streams, const double* weights);
void fomo_step(const Layout& layout, const CudaStreams& streams, const StepOptions& options, double local_loss,
               const double* candidate_losses, StepResult result);

// The dense evaluation on `device`, where the arrays of `data`, the candidates and (for CUDA)
// `result` live.
void evaluate_candidates(const Device& device, const CudaStreams& streams, const DenseNet& net,
                         const DenseCandidates& candidates, const DenseData& data, DenseResult result);

// Whether this build has the CUDA kernels, and how many devices the CUDA runtime sees (0, never an
// exception, without a driver or device).
bool cuda_built();
int cuda_device_count();

}  // namespace python
}  // namespace fomo
