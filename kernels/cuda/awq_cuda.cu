#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "kernels/cuda/awq_cuda.h"
#include "kernels/cuda/scale_rounding.h"

namespace quant::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
// Scratch the clipping search may take for its candidates and their outputs.
constexpr int64_t kClipScratchBytes = int64_t{512} << 20;

unsigned Blocks(int64_t n, int per_block = kThreads) {
  return static_cast<unsigned>((n + per_block - 1) / per_block);
}

absl::Status Launched(absl::string_view what) {
  return CudaError(cudaGetLastError(), what);
}

// AwqQuantize's grid for one segment of values (a group of a row), one warp
// per segment: value(k), k < width, is read twice; write(k, level,
// dequantized) is called once per value; the grid comes back on every lane.
template <typename Value, typename Write>
__device__ void QuantizeSegment(int64_t width, int bits, bool zero_point,
                                Value value, Write write, float& scale,
                                int& zero) {
  const int lane = threadIdx.x % 32;
  float lo = INFINITY, hi = -INFINITY, largest = 0;
  for (int64_t k = lane; k < width; k += 32) {
    const float x = value(k);
    lo = fminf(lo, x);
    hi = fmaxf(hi, x);
    largest = fmaxf(largest, fabsf(x));
  }
  for (int offset = 16; offset > 0; offset /= 2) {
    lo = fminf(lo, __shfl_xor_sync(0xffffffff, lo, offset));
    hi = fmaxf(hi, __shfl_xor_sync(0xffffffff, hi, offset));
    largest = fmaxf(largest, __shfl_xor_sync(0xffffffff, largest, offset));
  }
  const int maxq = (1 << bits) - 1;
  if (zero_point) {
    scale = RoundScaleToHalf(fmaxf(hi - lo, 1e-5f) / static_cast<float>(maxq));
    zero = static_cast<int>(
        fminf(fmaxf(-rintf(lo / scale), 1.0f), static_cast<float>(maxq)));
  } else {
    scale = RoundScaleToHalf(fmaxf(largest, 1e-5f) /
                             static_cast<float>((1 << (bits - 1)) - 1));
    zero = 1 << (bits - 1);
  }
  for (int64_t k = lane; k < width; k += 32) {
    const float level =
        fminf(fmaxf(rintf(value(k) / scale) + static_cast<float>(zero), 0.0f),
              static_cast<float>(maxq));
    const int q = static_cast<int>(level);
    write(k, q, scale * static_cast<float>(q - zero));
  }
}

// AwqQuantize of w [rows, cols] (times s per column when s is set; the
// dequantized values then divided by it again), one warp per (row, group).
__global__ void QuantizeKernel(const float* w, int64_t rows, int64_t cols,
                               int64_t width, const float* s, int bits,
                               bool zero_point, uint8_t* levels, float* scales,
                               int32_t* zeros, float* out) {
  const int64_t groups = cols / width;
  const int64_t segment = blockIdx.x * int64_t{kWarps} + threadIdx.x / 32;
  if (segment >= rows * groups) return;
  const int64_t r = segment / groups, g = segment % groups;
  const int64_t first = r * cols + g * width;
  const float* x = w + first;
  const float* column_scale = s == nullptr ? nullptr : s + g * width;
  float scale;
  int zero;
  QuantizeSegment(
      width, bits, zero_point,
      [&](int64_t k) {
        return column_scale == nullptr ? x[k] : x[k] * column_scale[k];
      },
      [&](int64_t k, int q, float dequantized) {
        if (levels != nullptr) levels[first + k] = static_cast<uint8_t>(q);
        if (out != nullptr) {
          out[first + k] = column_scale == nullptr
                               ? dequantized
                               : dequantized * (1.0f / column_scale[k]);
        }
      },
      scale, zero);
  if (threadIdx.x % 32 == 0 && scales != nullptr) {
    scales[g * rows + r] = scale;
    zeros[g * rows + r] = zero;
  }
}

// max |w| of each (row, group) into largest [rows, groups].
__global__ void GroupAbsMaxKernel(const float* w, int64_t rows, int64_t cols,
                                  int64_t width, float* largest) {
  const int64_t groups = cols / width;
  const int64_t segment = blockIdx.x * int64_t{kWarps} + threadIdx.x / 32;
  if (segment >= rows * groups) return;
  const float* x = w + (segment / groups) * cols + (segment % groups) * width;
  float m = 0;
  for (int64_t k = threadIdx.x % 32; k < width; k += 32)
    m = fmaxf(m, fabsf(x[k]));
  for (int offset = 16; offset > 0; offset /= 2) {
    m = fmaxf(m, __shfl_xor_sync(0xffffffff, m, offset));
  }
  if (threadIdx.x % 32 == 0) largest[segment] = m;
}

// sums[c] += |w_rc| / (largest_r,group(c) + 1e-6) over rows, in row order.
__global__ void WeightMeanKernel(const float* w, const float* largest,
                                 int64_t rows, int64_t cols, int64_t width,
                                 double* sums) {
  const int64_t c = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (c >= cols) return;
  const int64_t groups = cols / width, g = c / width;
  double total = sums[c];
  for (int64_t r = 0; r < rows; ++r) {
    total += static_cast<double>(fabsf(w[r * cols + c])) /
             (static_cast<double>(largest[r * groups + g]) + 1e-6);
  }
  sums[c] = total;
}

// Clipping candidates of group g: for shrink first + i and row r, the row's
// group clamped to largest * (1 - (first + i) / clip_grid) and quantized as
// one group, into cand [count, rows, width].
__global__ void ClipCandidatesKernel(const float* w, const float* largest,
                                     int64_t rows, int64_t cols, int64_t width,
                                     int64_t g, int first, int count,
                                     int clip_grid, int bits, bool zero_point,
                                     float* cand) {
  const int64_t segment = blockIdx.x * int64_t{kWarps} + threadIdx.x / 32;
  if (segment >= count * rows) return;
  const int64_t i = segment / rows, r = segment % rows;
  const int64_t groups = cols / width;
  const float keep =
      1.0f - static_cast<float>(first + i) / static_cast<float>(clip_grid);
  const float bound = largest[r * groups + g] * keep;
  const float* x = w + r * cols + g * width;
  float* out = cand + segment * width;
  float scale;
  int zero;
  QuantizeSegment(
      width, bits, zero_point,
      [&](int64_t k) { return fminf(fmaxf(x[k], -bound), bound); },
      [&](int64_t k, int, float dequantized) { out[k] = dequantized; }, scale,
      zero);
}

// For each row: the candidates' mean squared output error over n tokens
// (outputs [count, n, rows] against reference [n, rows]); a strictly smaller
// error than the best so far keeps that shrink's bound.
__global__ void ClipErrorKernel(const float* outputs, const float* reference,
                                const float* largest, int64_t rows,
                                int64_t groups, int64_t n, int64_t g, int first,
                                int count, int clip_grid, double* best_error,
                                float* best_max) {
  const int64_t r = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (r >= rows) return;
  const int64_t at = r * groups + g;
  for (int i = 0; i < count; ++i) {
    const float* candidate = outputs + i * n * rows;
    double error = 0;
    for (int64_t t = 0; t < n; ++t) {
      const double d = candidate[t * rows + r] - reference[t * rows + r];
      error += d * d;
    }
    error /= static_cast<double>(n);
    if (error < best_error[at]) {
      const float keep =
          1.0f - static_cast<float>(first + i) / static_cast<float>(clip_grid);
      best_error[at] = error;
      best_max[at] = largest[at] * keep;
    }
  }
}

__global__ void FillKernel(double* x, int64_t n, double value) {
  const int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (i < n) x[i] = value;
}

__global__ void ClampKernel(const float* bounds, int64_t rows, int64_t cols,
                            int64_t width, float* w) {
  const int64_t c = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  const int64_t r = blockIdx.y;
  if (c >= cols) return;
  const float bound = bounds[r * (cols / width) + c / width];
  w[r * cols + c] = fminf(fmaxf(w[r * cols + c], -bound), bound);
}

constexpr int kSumBlocks = 1024;

__global__ void SquaredDifferenceKernel(const float* a, const float* b,
                                        int64_t n, double* partial) {
  __shared__ double warp_sums[kWarps];
  double total = 0;
  for (int64_t i = blockIdx.x * int64_t{kThreads} + threadIdx.x; i < n;
       i += int64_t{kSumBlocks} * kThreads) {
    const double d = static_cast<double>(a[i]) - b[i];
    total += d * d;
  }
  for (int offset = 16; offset > 0; offset /= 2) {
    total += __shfl_down_sync(0xffffffff, total, offset);
  }
  if (threadIdx.x % 32 == 0) warp_sums[threadIdx.x / 32] = total;
  __syncthreads();
  if (threadIdx.x == 0) {
    double block = 0;
    for (int w = 0; w < kWarps; ++w) block += warp_sums[w];
    partial[blockIdx.x] = block;
  }
}

__global__ void Bf16ToFloatKernel(const uint16_t* x, int64_t n, int64_t width,
                                  const float* s, float* out) {
  const int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (i >= n * width) return;
  const float v = __bfloat162float(__ushort_as_bfloat16(x[i]));
  out[i] = s == nullptr ? v : v / s[i % width];
}

__global__ void GatherRowsKernel(const uint16_t* x, int64_t count, int64_t step,
                                 int64_t width, uint16_t* out) {
  const int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (i >= count * width) return;
  out[i] = x[(i / width) * step * width + i % width];
}

__global__ void DivideHessianKernel(const float* s, int64_t n, double* h) {
  const int64_t j = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  const int64_t i = blockIdx.y;
  if (j < n) h[i * n + j] /= static_cast<double>(s[i]) * s[j];
}

// FP32 (no TF32) column-major C [m, n] = A^T B with A [k, m] and B [k, n],
// `batch` times with the given strides.
absl::Status FloatProduct(const CudaContext& context, int64_t m, int64_t n,
                          int64_t k, const float* a, int64_t lda,
                          int64_t stride_a, const float* b, int64_t ldb,
                          int64_t stride_b, float* c, int64_t ldc,
                          int64_t stride_c, int batch) {
  const float one = 1.0f, zero = 0.0f;
  return CublasError(
      cublasGemmStridedBatchedEx(
          context.cublas(), CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(m),
          static_cast<int>(n), static_cast<int>(k), &one, a, CUDA_R_32F,
          static_cast<int>(lda), stride_a, b, CUDA_R_32F, static_cast<int>(ldb),
          stride_b, &zero, c, CUDA_R_32F, static_cast<int>(ldc), stride_c,
          batch, CUBLAS_COMPUTE_32F_PEDANTIC, CUBLAS_GEMM_DEFAULT),
      "the clipping search's products");
}

absl::StatusOr<DeviceBuffer> GroupAbsMax(const CudaContext& context,
                                         const float* w, int64_t rows,
                                         int64_t cols, int64_t width) {
  const int64_t segments = rows * (cols / width);
  ASSIGN_OR_RETURN(DeviceBuffer largest,
                   DeviceBuffer::Allocate(context, segments * 4,
                                          "the groups' largest weights"));
  GroupAbsMaxKernel<<<Blocks(segments, kWarps), kThreads, 0,
                      context.stream()>>>(w, rows, cols, width,
                                          largest.as<float>());
  RETURN_IF_ERROR(Launched("the groups' largest weights"));
  return largest;
}

}  // namespace

absl::StatusOr<DeviceGptqResult> AwqQuantizeOnDevice(
    const CudaContext& context, const float* w, int64_t rows, int64_t cols,
    int bits, int group_size, bool zero_point, float* dequantized) {
  RETURN_IF_ERROR(CheckAwqFormat(rows, cols, bits, group_size));
  RETURN_IF_ERROR(context.Activate());
  const int64_t width = group_size < 0 ? cols : group_size;
  DeviceGptqResult result;
  result.rows = rows, result.cols = cols, result.bits = bits;
  result.group_size = group_size;
  result.groups = cols / width;
  ASSIGN_OR_RETURN(result.levels,
                   DeviceBuffer::Allocate(context, rows * cols, "the levels"));
  ASSIGN_OR_RETURN(
      result.scales,
      DeviceBuffer::Allocate(context, result.groups * rows * 4, "the scales"));
  ASSIGN_OR_RETURN(
      result.zeros,
      DeviceBuffer::Allocate(context, result.groups * rows * 4, "the zeros"));
  result.g_idx.resize(static_cast<size_t>(cols));
  for (int64_t c = 0; c < cols; ++c) {
    result.g_idx[c] = static_cast<int32_t>(c / width);
  }
  QuantizeKernel<<<Blocks(rows * result.groups, kWarps), kThreads, 0,
                   context.stream()>>>(w, rows, cols, width, nullptr, bits,
                                       zero_point, result.levels.as<uint8_t>(),
                                       result.scales.as<float>(),
                                       result.zeros.as<int32_t>(), dequantized);
  RETURN_IF_ERROR(Launched("AWQ's quantizer"));
  return result;
}

absl::Status AwqScaledCandidateOnDevice(const CudaContext& context,
                                        const float* w, int64_t rows,
                                        int64_t cols, const float* scales,
                                        int bits, int group_size,
                                        bool zero_point, float* out) {
  RETURN_IF_ERROR(CheckAwqFormat(rows, cols, bits, group_size));
  RETURN_IF_ERROR(context.Activate());
  const int64_t width = group_size < 0 ? cols : group_size;
  QuantizeKernel<<<Blocks(rows * (cols / width), kWarps), kThreads, 0,
                   context.stream()>>>(w, rows, cols, width, scales, bits,
                                       zero_point, nullptr, nullptr, nullptr,
                                       out);
  return Launched("an AWQ scale candidate");
}

absl::Status AddAwqWeightMeanSums(const CudaContext& context, const float* w,
                                  int64_t rows, int64_t cols, int group_size,
                                  double* sums) {
  RETURN_IF_ERROR(context.Activate());
  const int64_t width = group_size < 0 ? cols : group_size;
  if (rows <= 0 || cols <= 0 || cols % width != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("AWQ group size ", group_size, " does not divide ", cols,
                     " input channels"));
  }
  ASSIGN_OR_RETURN(const DeviceBuffer largest,
                   GroupAbsMax(context, w, rows, cols, width));
  WeightMeanKernel<<<Blocks(cols, 128), 128, 0, context.stream()>>>(
      w, largest.as<float>(), rows, cols, width, sums);
  RETURN_IF_ERROR(Launched("AWQ's weight means"));
  // `largest` is freed on return.
  return context.Synchronize("AWQ's weight means");
}

absl::Status ClipAwqOnDevice(const CudaContext& context, const float* x,
                             int64_t tokens, const WeightFormat& format,
                             const AwqOptions& options, int64_t rows,
                             int64_t cols, float* w) {
  RETURN_IF_ERROR(CheckAwqFormat(rows, cols, format.bits, format.group_size));
  if (tokens < 1) return absl::InvalidArgumentError("no tokens to clip on");
  if (options.clip_grid < 1) {
    return absl::InvalidArgumentError("AWQ clip_grid must be positive");
  }
  RETURN_IF_ERROR(context.Activate());
  const cudaStream_t stream = context.stream();
  const int64_t width = format.group_size < 0 ? cols : format.group_size;
  const int64_t groups = cols / width;
  const AwqClipSearch plan = PlanAwqClip(tokens, options);
  const int64_t step = plan.step, n = plan.n;
  const int shrinks = plan.shrinks;
  const int per_chunk = static_cast<int>(std::clamp<int64_t>(
      kClipScratchBytes / ((rows * width + n * rows) * 4), 1, shrinks));

  ASSIGN_OR_RETURN(const DeviceBuffer largest,
                   GroupAbsMax(context, w, rows, cols, width));
  const char* what = "the clipping search";
  ASSIGN_OR_RETURN(DeviceBuffer best_max,
                   DeviceBuffer::Allocate(context, rows * groups * 4, what));
  ASSIGN_OR_RETURN(DeviceBuffer best_error,
                   DeviceBuffer::Allocate(context, rows * groups * 8, what));
  ASSIGN_OR_RETURN(DeviceBuffer reference,
                   DeviceBuffer::Allocate(context, n * rows * 4, what));
  ASSIGN_OR_RETURN(
      DeviceBuffer candidates,
      DeviceBuffer::Allocate(context, per_chunk * rows * width * 4, what));
  ASSIGN_OR_RETURN(
      DeviceBuffer outputs,
      DeviceBuffer::Allocate(context, per_chunk * n * rows * 4, what));
  RETURN_IF_ERROR(CopyOnDevice(context, best_max.as<void>(), largest.as<void>(),
                               rows * groups * 4, what));
  FillKernel<<<Blocks(rows * groups), kThreads, 0, stream>>>(
      best_error.as<double>(), rows * groups, INFINITY);
  RETURN_IF_ERROR(Launched(what));

  for (int64_t g = 0; g < groups; ++g) {
    // Outputs [n, rows] row-major are column-major [rows, n] = W_g^T X_g with
    // W_g the group's columns of w and X_g those of the sampled tokens.
    const float* xg = x + g * width;
    RETURN_IF_ERROR(FloatProduct(context, rows, n, width, w + g * width, cols,
                                 0, xg, step * cols, 0, reference.as<float>(),
                                 rows, 0, 1));
    for (int first = 0; first < shrinks; first += per_chunk) {
      const int count = std::min(per_chunk, shrinks - first);
      ClipCandidatesKernel<<<Blocks(count * rows, kWarps), kThreads, 0,
                             stream>>>(
          w, largest.as<float>(), rows, cols, width, g, first, count,
          options.clip_grid, format.bits, !format.sym, candidates.as<float>());
      RETURN_IF_ERROR(Launched(what));
      RETURN_IF_ERROR(FloatProduct(
          context, rows, n, width, candidates.as<float>(), width, rows * width,
          xg, step * cols, 0, outputs.as<float>(), rows, n * rows, count));
      ClipErrorKernel<<<Blocks(rows), kThreads, 0, stream>>>(
          outputs.as<float>(), reference.as<float>(), largest.as<float>(), rows,
          groups, n, g, first, count, options.clip_grid,
          best_error.as<double>(), best_max.as<float>());
      RETURN_IF_ERROR(Launched(what));
    }
  }
  ClampKernel<<<dim3(Blocks(cols), static_cast<unsigned>(rows)), kThreads, 0,
                stream>>>(best_max.as<float>(), rows, cols, width, w);
  RETURN_IF_ERROR(Launched(what));
  // The scratch is freed on return.
  return context.Synchronize(what);
}

absl::StatusOr<double> MeanSquaredDifferenceOnDevice(const CudaContext& context,
                                                     const float* a,
                                                     const float* b,
                                                     int64_t n) {
  if (n <= 0) return 0.0;
  RETURN_IF_ERROR(context.Activate());
  ASSIGN_OR_RETURN(DeviceBuffer partial,
                   DeviceBuffer::Allocate(context, kSumBlocks * 8,
                                          "a mean squared difference"));
  SquaredDifferenceKernel<<<kSumBlocks, kThreads, 0, context.stream()>>>(
      a, b, n, partial.as<double>());
  RETURN_IF_ERROR(Launched("a mean squared difference"));
  std::vector<double> sums(kSumBlocks);
  RETURN_IF_ERROR(CopyToHost(context, sums.data(), partial.as<void>(),
                             kSumBlocks * 8, "a mean squared difference"));
  double total = 0;
  for (double s : sums) total += s;
  return total / static_cast<double>(n);
}

absl::Status Bf16ToFloatOnDevice(const CudaContext& context, const uint16_t* x,
                                 int64_t n, int64_t width, const float* s,
                                 float* out) {
  RETURN_IF_ERROR(context.Activate());
  Bf16ToFloatKernel<<<Blocks(n * width), kThreads, 0, context.stream()>>>(
      x, n, width, s, out);
  return Launched("widening BF16 activations");
}

absl::Status GatherRowsOnDevice(const CudaContext& context, const uint16_t* x,
                                int64_t count, int64_t step, int64_t width,
                                uint16_t* out) {
  RETURN_IF_ERROR(context.Activate());
  GatherRowsKernel<<<Blocks(count * width), kThreads, 0, context.stream()>>>(
      x, count, step, width, out);
  return Launched("gathering sampled tokens");
}

absl::Status DivideHessianOnDevice(const CudaContext& context, const float* s,
                                   int64_t n, double* h) {
  RETURN_IF_ERROR(context.Activate());
  DivideHessianKernel<<<dim3(Blocks(n), static_cast<unsigned>(n)), kThreads, 0,
                        context.stream()>>>(s, n, h);
  return Launched("scaling a Hessian");
}

}  // namespace quant::cuda
