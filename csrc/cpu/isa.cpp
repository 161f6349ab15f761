// Run-time choice of the CPU instruction set (the wheel runs on any x86-64) and the thread count.
#include <cstdlib>
#include <cstring>

#include "cpu/kernels.h"

#if defined(FOMO_HAVE_OPENMP)
#include <omp.h>
#endif

namespace fomo {
namespace cpu {
namespace {

bool use_avx2() {
#if defined(FOMO_HAVE_ISA_avx2)
  // FOMO_CPU_ISA=base forces the portable kernels (used by the tests to compare both builds).
  const char* forced = std::getenv("FOMO_CPU_ISA");
  if (forced && std::strcmp(forced, "base") == 0) return false;
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
#else
  return false;
#endif
}

}  // namespace

const KernelSet& kernels() {
#if defined(FOMO_HAVE_ISA_avx2)
  static const KernelSet chosen = use_avx2() ? KernelSet{avx2::distance_partials, avx2::weighted_update}
                                             : KernelSet{base::distance_partials, base::weighted_update};
#else
  static const KernelSet chosen{base::distance_partials, base::weighted_update};
#endif
  return chosen;
}

const char* isa_name() { return kernels().distance_partials == base::distance_partials ? "base" : "avx2"; }

int64_t parallel_threshold() { return kParallelThreshold; }

int max_threads() {
#if defined(FOMO_HAVE_OPENMP)
  return omp_get_max_threads();
#else
  return 1;
#endif
}

void set_num_threads(int n) {
#if defined(FOMO_HAVE_OPENMP)
  omp_set_num_threads(n);
#else
  (void)n;
#endif
}

}  // namespace cpu
}  // namespace fomo
