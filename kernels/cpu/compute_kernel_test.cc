#include "kernels/cpu/compute_kernel.h"

#include <cblas.h>

#include "gtest/gtest.h"

namespace quant {
namespace {

TEST(ComputeKernelTest, NamesTheLibraryVersionAndDispatchedCore) {
  const ComputeKernel& kernel = CpuComputeKernel();
  EXPECT_EQ(kernel.backend, "cpu");
  EXPECT_EQ(kernel.kernel.rfind("OpenBLAS 0.", 0), 0u) << kernel.kernel;
  const std::string core = openblas_get_corename();
  ASSERT_FALSE(core.empty());
  EXPECT_EQ(kernel.kernel.substr(kernel.kernel.size() - core.size()), core);
  EXPECT_EQ(&CpuComputeKernel(), &kernel);  // Asked once.
}

}  // namespace
}  // namespace quant
