#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "kernels/cuda/hessian_cuda.h"

namespace quant::cuda {
namespace {

__global__ void AccumulateKernel(const float* product, int64_t count,
                                 double* total) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < count;
       i += int64_t{gridDim.x} * blockDim.x) {
    total[i] += product[i];
  }
}

__device__ __forceinline__ float Load(const float* x, int64_t i) {
  return x[i];
}
__device__ __forceinline__ float Load(const uint16_t* x, int64_t i) {
  return __uint_as_float(static_cast<uint32_t>(x[i]) << 16);
}

constexpr int kSlices = 64;

// partial[s][c] = sum |x[t, c]| over the s-th of kSlices slices of the
// tokens: coalesced across each warp, and without atomics, so that the
// totals are the same on every run.
template <typename T>
__global__ void SumAbsKernel(const T* x, int64_t n, int64_t columns,
                             double* partial) {
  const int64_t c = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (c >= columns) return;
  const int64_t slice = (n + kSlices - 1) / kSlices;
  const int64_t first = blockIdx.y * slice;
  const int64_t last = min(first + slice, n);
  double total = 0;
  for (int64_t t = first; t < last; ++t)
    total += fabsf(Load(x, t * columns + c));
  partial[blockIdx.y * columns + c] = total;
}

// sum_abs[c] += the slices' partial sums, in slice order.
__global__ void AddSlicesKernel(const double* partial, int64_t columns,
                                double* sum_abs) {
  const int64_t c = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (c >= columns) return;
  double total = sum_abs[c];
  for (int s = 0; s < kSlices; ++s) total += partial[s * columns + c];
  sum_abs[c] = total;
}

__global__ void ScaleKernel(const double* total, int64_t count, double scale,
                            double* out) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < count;
       i += int64_t{gridDim.x} * blockDim.x) {
    out[i] = scale * total[i];
  }
}

constexpr unsigned kGrid = 1024, kThreads = 256;

// a [2 * count, cols]: rows r < count are q - w of row first + r, the next
// count rows w itself, in FP64.
__global__ void StackDifferenceKernel(const float* w, const float* q,
                                      int64_t first, int64_t count,
                                      int64_t cols, double* a) {
  const int64_t total = count * cols;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < total;
       i += int64_t{gridDim.x} * blockDim.x) {
    const int64_t at = first * cols + i;
    const double original = w[at];
    a[i] = static_cast<double>(q[at]) - original;
    a[total + i] = original;
  }
}

// dots[r] = sum_k a[r, k] b[r, k], one block per row, a fixed tree order.
__global__ void RowDotKernel(const double* a, const double* b, int64_t cols,
                             double* dots) {
  __shared__ double partial[kThreads];
  const int64_t row = blockIdx.x;
  double total = 0;
  for (int64_t k = threadIdx.x; k < cols; k += blockDim.x) {
    total += a[row * cols + k] * b[row * cols + k];
  }
  partial[threadIdx.x] = total;
  __syncthreads();
  for (int half = blockDim.x / 2; half > 0; half /= 2) {
    if (threadIdx.x < half) partial[threadIdx.x] += partial[threadIdx.x + half];
    __syncthreads();
  }
  if (threadIdx.x == 0) dots[row] = partial[0];
}

}  // namespace

absl::StatusOr<std::vector<double>> HessianDiagonal(const CudaContext& context,
                                                    const double* h,
                                                    int64_t columns) {
  RETURN_IF_ERROR(context.Activate());
  std::vector<double> diagonal(static_cast<size_t>(columns));
  const size_t pitch = static_cast<size_t>(columns + 1) * sizeof(double);
  RETURN_IF_ERROR(
      CudaError(cudaMemcpy2DAsync(diagonal.data(), sizeof(double), h, pitch,
                                  sizeof(double), static_cast<size_t>(columns),
                                  cudaMemcpyDeviceToHost, context.stream()),
                "copying the Hessian's diagonal from the GPU"));
  RETURN_IF_ERROR(context.Synchronize("copying the Hessian's diagonal"));
  return diagonal;
}

absl::StatusOr<HessianQuadratics> ComputeHessianQuadratics(
    const CudaContext& context, const float* w, const float* q, int64_t rows,
    int64_t cols, const double* h) {
  RETURN_IF_ERROR(context.Activate());
  HessianQuadratics out;
  if (rows <= 0 || cols <= 0) return out;
  // Rows at a time so that the stacked operand and its product stay near
  // 256 MiB each.
  const int64_t chunk =
      std::max<int64_t>(1, std::min<int64_t>(rows, (int64_t{16} << 20) / cols));
  ASSIGN_OR_RETURN(DeviceBuffer a,
                   DeviceBuffer::Allocate(context, 2 * chunk * cols * 8,
                                          "the quantization error (FP64)"));
  ASSIGN_OR_RETURN(DeviceBuffer ah, DeviceBuffer::Allocate(
                                        context, 2 * chunk * cols * 8,
                                        "the error times the Hessian (FP64)"));
  ASSIGN_OR_RETURN(DeviceBuffer dots,
                   DeviceBuffer::Allocate(context, 2 * chunk * 8, "row sums"));
  std::vector<double> host(static_cast<size_t>(2 * chunk));
  const double one = 1, zero = 0;
  for (int64_t first = 0; first < rows; first += chunk) {
    const int64_t count = std::min(chunk, rows - first);
    StackDifferenceKernel<<<kGrid, kThreads, 0, context.stream()>>>(
        w, q, first, count, cols, a.as<double>());
    RETURN_IF_ERROR(CudaError(cudaGetLastError(), "stacking the error"));
    // Row-major A [2 count, cols] is column-major A^T; A H = (H A^T)^T with
    // H symmetric.
    RETURN_IF_ERROR(CublasError(
        cublasDgemm(context.cublas(), CUBLAS_OP_N, CUBLAS_OP_N,
                    static_cast<int>(cols), static_cast<int>(2 * count),
                    static_cast<int>(cols), &one, h, static_cast<int>(cols),
                    a.as<double>(), static_cast<int>(cols), &zero,
                    ah.as<double>(), static_cast<int>(cols)),
        "the error times the Hessian"));
    RowDotKernel<<<static_cast<unsigned>(2 * count), kThreads, 0,
                   context.stream()>>>(a.as<double>(), ah.as<double>(), cols,
                                       dots.as<double>());
    RETURN_IF_ERROR(CudaError(cudaGetLastError(), "summing the error"));
    RETURN_IF_ERROR(CopyToHost(context, host.data(), dots.as<void>(),
                               2 * count * 8, "the error's row sums"));
    for (int64_t r = 0; r < count; ++r) {
      out.error += host[r];
      out.signal += host[count + r];
    }
  }
  return out;
}

absl::StatusOr<DeviceHessian> DeviceHessian::Create(const CudaContext& context,
                                                    int64_t columns) {
  if (columns <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("a Hessian of ", columns, " columns"));
  }
  DeviceHessian h(context, columns);
  ASSIGN_OR_RETURN(h.sum_xxt_,
                   DeviceBuffer::Allocate(context, columns * columns * 8,
                                          "the Hessian totals"));
  ASSIGN_OR_RETURN(h.sum_abs_, DeviceBuffer::Allocate(context, columns * 8,
                                                      "the |x| totals"));
  ASSIGN_OR_RETURN(h.abs_partial_,
                   DeviceBuffer::Allocate(context, kSlices * columns * 8,
                                          "the |x| partial sums"));
  ASSIGN_OR_RETURN(h.product_,
                   DeviceBuffer::Allocate(context, columns * columns * 4,
                                          "a batch's X^T X"));
  RETURN_IF_ERROR(
      CudaError(cudaMemsetAsync(h.sum_xxt_.as<void>(), 0, columns * columns * 8,
                                context.stream()),
                "clearing the Hessian"));
  RETURN_IF_ERROR(CudaError(
      cudaMemsetAsync(h.sum_abs_.as<void>(), 0, columns * 8, context.stream()),
      "clearing the Hessian"));
  return h;
}

absl::Status DeviceHessian::AddProduct(const void* x, int64_t n, bool bf16) {
  if (n <= 0) return absl::OkStatus();
  RETURN_IF_ERROR(context_->Activate());
  const float one = 1.0f, zero = 0.0f;
  const cudaDataType type = bf16 ? CUDA_R_16BF : CUDA_R_32F;
  // Row-major x [n, columns] is column-major x^T [columns, n]; x^T x.
  const cublasStatus_t status = cublasGemmEx(
      context_->cublas(), CUBLAS_OP_N, CUBLAS_OP_T, static_cast<int>(columns_),
      static_cast<int>(columns_), static_cast<int>(n), &one, x, type,
      static_cast<int>(columns_), x, type, static_cast<int>(columns_), &zero,
      product_.as<void>(), CUDA_R_32F, static_cast<int>(columns_),
      bf16 ? CUBLAS_COMPUTE_32F : CUBLAS_COMPUTE_32F_PEDANTIC,
      CUBLAS_GEMM_DEFAULT);
  RETURN_IF_ERROR(CublasError(status, "accumulating a Hessian"));
  AccumulateKernel<<<kGrid, kThreads, 0, context_->stream()>>>(
      product_.as<float>(), columns_ * columns_, sum_xxt_.as<double>());
  const unsigned column_blocks = static_cast<unsigned>((columns_ + 255) / 256);
  const dim3 blocks(column_blocks, kSlices);
  double* const partial = abs_partial_.as<double>();
  if (bf16) {
    SumAbsKernel<<<blocks, 256, 0, context_->stream()>>>(
        static_cast<const uint16_t*>(x), n, columns_, partial);
  } else {
    SumAbsKernel<<<blocks, 256, 0, context_->stream()>>>(
        static_cast<const float*>(x), n, columns_, partial);
  }
  AddSlicesKernel<<<column_blocks, 256, 0, context_->stream()>>>(
      partial, columns_, sum_abs_.as<double>());
  RETURN_IF_ERROR(CudaError(cudaGetLastError(), "accumulating a Hessian"));
  samples_ += n;
  return absl::OkStatus();
}

absl::Status DeviceHessian::Add(const float* x, int64_t n) {
  return AddProduct(x, n, false);
}

absl::Status DeviceHessian::AddBf16(const uint16_t* x, int64_t n) {
  return AddProduct(x, n, true);
}

absl::Status DeviceHessian::Merge(const DeviceHessian& other) {
  if (other.columns_ != columns_) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot merge statistics of ", other.columns_,
                     " columns into ", columns_));
  }
  RETURN_IF_ERROR(context_->Activate());
  // Both totals are FP64: their sum is what one accumulator would hold.
  const double one = 1.0;
  for (auto [mine, theirs, count] :
       {std::make_tuple(sum_xxt_.as<double>(), other.sum_xxt_.as<double>(),
                        columns_ * columns_),
        std::make_tuple(sum_abs_.as<double>(), other.sum_abs_.as<double>(),
                        columns_)}) {
    const cublasStatus_t status = cublasDaxpy(
        context_->cublas(), static_cast<int>(count), &one, theirs, 1, mine, 1);
    RETURN_IF_ERROR(CublasError(status, "merging Hessians"));
  }
  samples_ += other.samples_;
  return absl::OkStatus();
}

absl::Status DeviceHessian::Hessian(double* h) const {
  RETURN_IF_ERROR(context_->Activate());
  const double scale = samples_ > 0 ? 2.0 / static_cast<double>(samples_) : 0;
  ScaleKernel<<<kGrid, kThreads, 0, context_->stream()>>>(
      sum_xxt_.as<double>(), columns_ * columns_, scale, h);
  return CudaError(cudaGetLastError(), "scaling the Hessian");
}

absl::StatusOr<std::vector<double>> DeviceHessian::HessianOnHost() const {
  ASSIGN_OR_RETURN(DeviceBuffer h,
                   DeviceBuffer::Allocate(*context_, columns_ * columns_ * 8,
                                          "the Hessian"));
  RETURN_IF_ERROR(Hessian(h.as<double>()));
  std::vector<double> out(static_cast<size_t>(columns_ * columns_));
  RETURN_IF_ERROR(CopyToHost(*context_, out.data(), h.as<void>(),
                             columns_ * columns_ * 8, "the Hessian"));
  return out;
}

absl::StatusOr<std::vector<double>> DeviceHessian::MeanAbs() const {
  std::vector<double> mean(static_cast<size_t>(columns_));
  RETURN_IF_ERROR(CopyToHost(*context_, mean.data(), sum_abs_.as<void>(),
                             columns_ * 8, "the |x| totals"));
  if (samples_ > 0) {
    for (double& m : mean) m /= static_cast<double>(samples_);
  }
  return mean;
}

absl::Status DeviceHessian::CopySumsToHost(std::vector<double>* sum_xxt,
                                           std::vector<double>* sum_abs) const {
  sum_xxt->resize(static_cast<size_t>(columns_ * columns_));
  sum_abs->resize(static_cast<size_t>(columns_));
  RETURN_IF_ERROR(CopyToHost(*context_, sum_xxt->data(), sum_xxt_.as<void>(),
                             columns_ * columns_ * 8, "the Hessian totals"));
  return CopyToHost(*context_, sum_abs->data(), sum_abs_.as<void>(),
                    columns_ * 8, "the |x| totals");
}

}  // namespace quant::cuda
