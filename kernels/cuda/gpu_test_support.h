// For the GPU tests: the device they run on, and the skip where there is
// none (CI has no GPU; the GPU tests run on the GPU machine).
#ifndef KERNELS_CUDA_GPU_TEST_SUPPORT_H_
#define KERNELS_CUDA_GPU_TEST_SUPPORT_H_

#include <memory>

#include "gtest/gtest.h"
#include "kernels/cuda/cuda_context.h"

namespace quant::cuda {

// A context on device 0, or null without a usable device.
std::unique_ptr<CudaContext> OpenGpu();

}  // namespace quant::cuda

// Skips the test when `device` (a pointer) is null, saying why.
#define REQUIRE_GPU(device)                                         \
  if ((device) == nullptr) {                                        \
    GTEST_SKIP() << "no CUDA device here ("                         \
                 << ::quant::cuda::ListDevices().status().message() \
                 << "); the GPU tests run on the GPU machine";      \
  }

#endif  // KERNELS_CUDA_GPU_TEST_SUPPORT_H_
