// AWQ's per-linear pieces (quant/awq.h) on the GPU: AutoAWQ's weight
// quantizer, the candidate weights of the scale search, the weight means the
// scales are made of, and the clipping search. Given the same FP32 inputs the
// quantizer and the candidates are bit for bit the CPU's (the same fp16
// rounding of scales, round-half-even levels, no fused multiply-adds where
// the CPU has none); the clipping search's products are plain FP32 (no TF32)
// and its errors FP64 sums, so it picks the CPU's bounds but for near ties.
#ifndef KERNELS_CUDA_AWQ_CUDA_H_
#define KERNELS_CUDA_AWQ_CUDA_H_

#include <cstdint>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/cuda/cuda_context.h"
#include "kernels/cuda/gptq_cuda.h"
#include "quant/awq.h"

namespace quant::cuda {

// quant::AwqQuantize of device weights w [rows, cols]; `dequantized`, when
// set, is device memory that receives scale * (q - zero) [rows, cols].
absl::StatusOr<DeviceGptqResult> AwqQuantizeOnDevice(
    const CudaContext& context, const float* w, int64_t rows, int64_t cols,
    int bits, int group_size, bool zero_point, float* dequantized = nullptr);

// A candidate of the scale search: out = Q(w diag(s)) diag(s)^-1, with
// AwqQuantize's grid Q, for device w [rows, cols] and s [cols].
absl::Status AwqScaledCandidateOnDevice(const CudaContext& context,
                                        const float* w, int64_t rows,
                                        int64_t cols, const float* scales,
                                        int bits, int group_size,
                                        bool zero_point, float* out);

// Adds to sums (device double [cols]) sum over rows of |w| / (max |w| of its
// group + 1e-6): quant::AwqWeightMean's sums, in its order, before the
// division by the rows of all linears of the group.
absl::Status AddAwqWeightMeanSums(const CudaContext& context, const float* w,
                                  int64_t rows, int64_t cols, int group_size,
                                  double* sums);

// quant::ClipAwq: x is device float [tokens, cols] (the sampled inputs), w
// device float [rows, cols], clamped in place.
absl::Status ClipAwqOnDevice(const CudaContext& context, const float* x,
                             int64_t tokens, const WeightFormat& format,
                             const AwqOptions& options, int64_t rows,
                             int64_t cols, float* w);

// mean((a - b)^2) over n device floats, summed in FP64 in a fixed order.
absl::StatusOr<double> MeanSquaredDifferenceOnDevice(const CudaContext& context,
                                                     const float* a,
                                                     const float* b, int64_t n);

// out [n, width] = float(x) / s per column, for x device bfloat16 [n, width]
// (s null: no division).
absl::Status Bf16ToFloatOnDevice(const CudaContext& context, const uint16_t* x,
                                 int64_t n, int64_t width, const float* s,
                                 float* out);

// out [count, width] = rows 0, step, 2 step, ... of x (device bfloat16 with
// rows of `width`).
absl::Status GatherRowsOnDevice(const CudaContext& context, const uint16_t* x,
                                int64_t count, int64_t step, int64_t width,
                                uint16_t* out);

// h [n, n] (device) divided by s_i s_j: the Hessian of inputs divided by s.
absl::Status DivideHessianOnDevice(const CudaContext& context, const float* s,
                                   int64_t n, double* h);

}  // namespace quant::cuda

#endif  // KERNELS_CUDA_AWQ_CUDA_H_
