#include "kernels/cpu/compute_kernel.h"

#include <cblas.h>
#include <omp.h>

#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace quant {

ComputeKernel CpuComputeKernel() {
  // openblas_get_config(): "OpenBLAS 0.3.21 DYNAMIC_ARCH NO_AFFINITY Zen
  // MAX_THREADS=64"; the library and version are its first two words.
  const std::vector<std::string> config =
      absl::StrSplit(openblas_get_config(), ' ', absl::SkipEmpty());
  std::string library = config.empty() ? "OpenBLAS" : config[0];
  if (config.size() > 1) absl::StrAppend(&library, " ", config[1]);
  const int threads = openblas_get_num_threads();
  return {"cpu", absl::StrCat(library, " ", openblas_get_corename(), ", ",
                              threads, threads == 1 ? " thread" : " threads")};
}

void SetCpuThreads(int threads) {
  if (threads <= 0) return;
  omp_set_num_threads(threads);
  openblas_set_num_threads(threads);
}

}  // namespace quant
