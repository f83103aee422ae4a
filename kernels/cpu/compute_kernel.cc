#include "kernels/cpu/compute_kernel.h"

#include <cblas.h>

#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace quant {

const ComputeKernel& CpuComputeKernel() {
  static const ComputeKernel* const kernel = [] {
    // openblas_get_config(): "OpenBLAS 0.3.21 DYNAMIC_ARCH NO_AFFINITY Zen
    // MAX_THREADS=64"; the library and version are its first two words.
    const std::vector<std::string> config =
        absl::StrSplit(openblas_get_config(), ' ', absl::SkipEmpty());
    std::string library = config.empty() ? "OpenBLAS" : config[0];
    if (config.size() > 1) absl::StrAppend(&library, " ", config[1]);
    return new ComputeKernel{"cpu",
                             absl::StrCat(library, " ", openblas_get_corename())};
  }();
  return *kernel;
}

}  // namespace quant
