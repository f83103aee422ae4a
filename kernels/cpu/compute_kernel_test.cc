#include "kernels/cpu/compute_kernel.h"

#include <cblas.h>

#include "gtest/gtest.h"

namespace quant {
namespace {

TEST(ComputeKernelTest, NamesTheLibraryCoreAndThreads) {
  const int threads = openblas_get_num_threads();
  SetCpuThreads(1);
  const ComputeKernel one = CpuComputeKernel();
  EXPECT_EQ(one.backend, "cpu");
  EXPECT_EQ(one.kernel.rfind("OpenBLAS 0.", 0), 0u) << one.kernel;
  EXPECT_NE(one.kernel.find(std::string(" ") + openblas_get_corename() + ", "),
            std::string::npos)
      << one.kernel;
  EXPECT_EQ(one.kernel.substr(one.kernel.size() - 10), ", 1 thread");
  SetCpuThreads(3);
  const std::string three = CpuComputeKernel().kernel;
  EXPECT_EQ(three.substr(three.size() - 11), ", 3 threads");
  SetCpuThreads(0);  // Leaves it.
  EXPECT_EQ(openblas_get_num_threads(), 3);
  SetCpuThreads(threads);
}

}  // namespace
}  // namespace quant
