#include "python/dispatch.h"

#include "fomo/check.h"

namespace fomo {
namespace python {
namespace {

bool on_cuda(const Layout& layout) { return layout.device.kind == DeviceKind::cuda; }

#if defined(FOMO_HAVE_CUDA)
// The call's stream, after making it wait for every other stream the arrays' producers named.
cuda::DeviceStream place(const Device& device, const CudaStreams& streams) {
  void* work = reinterpret_cast<void*>(streams.work);
  for (uintptr_t producer : streams.producers) cuda::stream_wait(device.index, work, reinterpret_cast<void*>(producer));
  return {device.index, work};
}
cuda::DeviceStream place(const Layout& layout, const CudaStreams& streams) { return place(layout.device, streams); }
#else
[[noreturn]] void no_cuda(const Device& device) {
  fail_value("the arrays are on ", device.str(),
             " but this build of fomo_core has no CUDA kernels "
             "(rebuild with a CUDA toolkit on the PATH and FOMO_CUDA=ON)");
}
[[noreturn]] void no_cuda(const Layout& layout) { no_cuda(layout.device); }
#endif

}  // namespace

void candidate_distances(const Layout& layout, const CudaStreams& streams, Norm norm, const uint8_t* measure,
                         double* distances) {
  if (on_cuda(layout)) {
#if defined(FOMO_HAVE_CUDA)
    return cuda::candidate_distances(layout.model_runs(), norm, measure, distances, place(layout, streams));
#else
    no_cuda(layout);
#endif
  }
  cpu::candidate_distances(layout.model_runs(), norm, measure, distances);
}

void apply_update(const Layout& layout, const CudaStreams& streams, const double* weights) {
  if (on_cuda(layout)) {
#if defined(FOMO_HAVE_CUDA)
    return cuda::apply_update(layout.model_runs(), weights, place(layout, streams));
#else
    no_cuda(layout);
#endif
  }
  cpu::apply_update(layout.model_runs(), weights);
}

void fomo_step(const Layout& layout, const CudaStreams& streams, const StepOptions& options, double local_loss,
               const double* candidate_losses, StepResult result) {
  if (on_cuda(layout)) {
#if defined(FOMO_HAVE_CUDA)
    return cuda::fomo_step(layout.model_runs(), options, local_loss, candidate_losses, result, place(layout, streams));
#else
    no_cuda(layout);
#endif
  }
  cpu::fomo_step(layout.model_runs(), options, local_loss, candidate_losses, result);
}

void evaluate_candidates(const Device& device, const CudaStreams& streams, const DenseNet& net,
                         const DenseCandidates& candidates, const DenseData& data, DenseResult result) {
  if (device.kind == DeviceKind::cuda) {
#if defined(FOMO_HAVE_CUDA)
    return cuda::evaluate_candidates(net, candidates, data, result, place(device, streams));
#else
    (void)streams;
    no_cuda(device);
#endif
  }
  cpu::evaluate_candidates(net, candidates, data, result);
}

#if defined(FOMO_HAVE_CUDA)
bool cuda_built() { return true; }
int cuda_device_count() { return cuda::device_count(); }
#else
bool cuda_built() { return false; }
int cuda_device_count() { return 0; }
#endif

}  // namespace python
}  // namespace fomo
