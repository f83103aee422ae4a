// Device helpers shared by the quantizers' kernels (nvcc only).
#ifndef KERNELS_CUDA_SCALE_ROUNDING_H_
#define KERNELS_CUDA_SCALE_ROUNDING_H_

#include <cuda_fp16.h>

namespace quant::cuda {

// quant::RoundScaleToHalf: a scale as fp16 stores it, at least 2^-24.
__device__ __forceinline__ float RoundScaleToHalf(float scale) {
  const float rounded = __half2float(__float2half_rn(scale));
  return rounded > 0 ? rounded : 5.9604644775390625e-8f;  // 2^-24.
}

}  // namespace quant::cuda

#endif  // KERNELS_CUDA_SCALE_ROUNDING_H_
