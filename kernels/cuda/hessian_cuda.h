// quant::HessianAccumulator (quant/hessian.h) on the GPU: the GPTQ Hessian
// H = 2/N sum_n x_n x_n^T and AWQ's mean |x| per column, from inputs that
// stay on the device. Each batch's X^T X is one cuBLAS product into FP32
// (plain FP32 for float inputs; tensor cores with FP32 accumulation for
// bfloat16 inputs) added into FP64 totals, so that accumulators over
// different calibration shards merge exactly as on the CPU.
#ifndef KERNELS_CUDA_HESSIAN_CUDA_H_
#define KERNELS_CUDA_HESSIAN_CUDA_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/cuda/cuda_context.h"

namespace quant::cuda {

class DeviceHessian {
 public:
  // ResourceExhausted when the totals do not fit on the device.
  static absl::StatusOr<DeviceHessian> Create(const CudaContext& context,
                                              int64_t columns);

  int64_t columns() const { return columns_; }
  int64_t samples() const { return samples_; }

  // Adds `n` rows x [n, columns] (row-major, device memory).
  absl::Status Add(const float* x, int64_t n);
  // The same for bfloat16 rows (raw bits).
  absl::Status AddBf16(const uint16_t* x, int64_t n);

  // Adds another accumulator's samples (same device). InvalidArgument when
  // the column counts differ.
  absl::Status Merge(const DeviceHessian& other);

  // 2/N sum x x^T [columns, columns] into device memory `h` (zeros before
  // any sample).
  absl::Status Hessian(double* h) const;
  // The same, copied to the host.
  absl::StatusOr<std::vector<double>> HessianOnHost() const;
  // Mean |x| per column, on the host.
  absl::StatusOr<std::vector<double>> MeanAbs() const;
  // The FP64 totals themselves, on the host: sum x x^T [columns, columns]
  // (the full product) and sum |x| [columns] (a data-parallel shard's
  // statistics, for quant::HessianAccumulator::FromSums).
  absl::Status CopySumsToHost(std::vector<double>* sum_xxt,
                              std::vector<double>* sum_abs) const;

 private:
  DeviceHessian(const CudaContext& context, int64_t columns)
      : context_(&context), columns_(columns) {}
  absl::Status AddProduct(const void* x, int64_t n, bool bf16);

  const CudaContext* context_;
  int64_t columns_;
  int64_t samples_ = 0;
  DeviceBuffer sum_xxt_;      // double [columns, columns].
  DeviceBuffer sum_abs_;      // double [columns].
  DeviceBuffer abs_partial_;  // double [slices, columns]: one batch's |x| sums.
  DeviceBuffer product_;      // float [columns, columns]: one batch's X^T X.
};

// The diagonal of a device matrix h [columns, columns], on the host.
absl::StatusOr<std::vector<double>> HessianDiagonal(const CudaContext& context,
                                                    const double* h,
                                                    int64_t columns);

// For weights w and their quantized values q (device float [rows, cols]) and
// a Hessian h (device double [cols, cols]): tr(D h D^T) with D = q - w (twice
// GPTQ's proxy loss) and tr(w h w^T), in FP64 products, summed in a fixed
// order (the same on every run).
struct HessianQuadratics {
  double error = 0, signal = 0;
};
absl::StatusOr<HessianQuadratics> ComputeHessianQuadratics(
    const CudaContext& context, const float* w, const float* q, int64_t rows,
    int64_t cols, const double* h);

}  // namespace quant::cuda

#endif  // KERNELS_CUDA_HESSIAN_CUDA_H_
