#include "kernels/cuda/gpu_test_support.h"

#include <utility>

namespace quant::cuda {

std::unique_ptr<CudaContext> OpenGpu() {
  absl::StatusOr<std::unique_ptr<CudaContext>> context = CudaContext::Create(0);
  return context.ok() ? std::move(*context) : nullptr;
}

}  // namespace quant::cuda
