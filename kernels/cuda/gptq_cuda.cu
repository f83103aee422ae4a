#include <cublas_v2.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <cusolverDn.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <numeric>
#include <tuple>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "kernels/cuda/gptq_cuda.h"
#include "kernels/cuda/scale_rounding.h"

namespace quant::cuda {
namespace {

constexpr int kMaxBlock = 128;  // Columns of one lazy block in registers.

// Where the column loop takes each weight's grid from.
enum class ParamMode : int {
  kFitted,  // Fitted when the solve reaches each group (solve order).
  kPerRow,  // One group per row, fitted up front.
  kStatic,  // Groups of original columns, fitted up front.
  kTable,   // A GGUF grid: each weight's step and offset (solve order).
};

// ---- The min-max grid, as quant/gptq.cc computes it. ----

__device__ void RangeParams(float lo, float hi, int maxq, bool sym,
                            float& scale, int& zero) {
  if (sym) {
    hi = fmaxf(-lo, hi);
    if (lo < 0) lo = -hi;
  }
  if (lo == 0 && hi == 0) lo = -1, hi = 1;
  scale = RoundScaleToHalf((hi - lo) / static_cast<float>(maxq));
  zero = sym ? (maxq + 1) / 2 : max(1, static_cast<int>(rintf(-lo / scale)));
}

__device__ __forceinline__ int Level(float x, float scale, int zero, int maxq) {
  const float q = rintf(x / scale) + static_cast<float>(zero);
  return static_cast<int>(fminf(fmaxf(q, 0.0f), static_cast<float>(maxq)));
}

// Min-max parameters of `width` values value(k), shrunk by AutoGPTQ's mse
// search when `mse` is set (see FindParams in quant/gptq.cc).
template <typename Value>
__device__ void FindParams(int width, int maxq, bool sym, bool mse, Value value,
                           float& scale, int& zero) {
  float lo = 0, hi = 0;
  for (int k = 0; k < width; ++k) {
    lo = fminf(lo, value(k));
    hi = fmaxf(hi, value(k));
  }
  RangeParams(lo, hi, maxq, sym, scale, zero);
  if (!mse) return;
  constexpr int kGrid = 100, kSteps = 80;
  double best = INFINITY;
  for (int i = 0; i < kSteps; ++i) {
    const float shrink = 1.0f - static_cast<float>(i) / kGrid;
    float s;
    int z;
    RangeParams(shrink * lo, shrink * hi, maxq, sym, s, z);
    double error = 0;
    for (int k = 0; k < width; ++k) {
      const float x = value(k);
      const float d = s * static_cast<float>(Level(x, s, z, maxq) - z) - x;
      error += pow(static_cast<double>(fabsf(d)), 2.4);
    }
    if (error < best) best = error, scale = s, zero = z;
  }
}

// ---- The factorization. ----

// hr = J P^T (H + damp I) P J: H with its columns in solve order (perm),
// reversed; dead inputs get a diagonal of 1 before dampening.
__global__ void ReversedHessianKernel(const double* h, int64_t n,
                                      const int32_t* perm, const uint8_t* dead,
                                      double damp, double* hr) {
  const int64_t j = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  const int64_t i = blockIdx.y;
  if (j >= n) return;
  const int64_t a = perm[n - 1 - i], b = perm[n - 1 - j];
  double v = h[a * n + b];
  if (a == b) v = (dead[a] ? 1.0 : v) + damp;
  hr[i * n + j] = v;
}

__device__ __forceinline__ float RoundToTf32(float x) {
  uint32_t bits;
  asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(bits) : "f"(x));
  return __uint_as_float(bits);
}

// potrf (upper, column-major) leaves R with hr = R^T R, R(a, b) at
// r[a + b * n]; V = J R^T J, so V_jk = R(n-1-k, n-1-j) for k >= j. Writes
// Vn_jk = V_jk / V_kk (zero below the diagonal) as three rows per j: its
// TF32 high part, the TF32 rest, the high part again (the operand of the
// 3xTF32 lazy products); and V_kk.
__global__ void ExtractVKernel(const double* r, int64_t n, float* vhl,
                               float* v_diagonal) {
  const int64_t k = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  const int64_t j = blockIdx.y;
  if (k >= n) return;
  const double vkk = r[(n - 1 - k) * (n + 1)];
  const float v =
      k >= j ? static_cast<float>(r[(n - 1 - k) + (n - 1 - j) * n] / vkk)
             : 0.0f;
  const float hi = RoundToTf32(v);
  float* row = vhl + 3 * j * n + k;
  row[0] = hi;
  row[n] = RoundToTf32(v - hi);
  row[2 * n] = hi;
  if (j == 0) v_diagonal[k] = static_cast<float>(vkk);
}

// ws[r][j] = w[r][perm[j]], dead inputs zeroed.
__global__ void PermuteWeightsKernel(const float* w, int64_t cols,
                                     const int32_t* perm, const uint8_t* dead,
                                     float* ws) {
  const int64_t j = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  const int64_t r = blockIdx.y;
  if (j >= cols) return;
  const int32_t c = perm[j];
  ws[r * cols + j] = dead[c] ? 0.0f : w[r * cols + c];
}

// Up-front groups of original columns [g * width, ...) of each row, on the
// weights with dead inputs (if given) zeroed: [groups, rows].
__global__ void FitFixedGroupsKernel(const float* w, int64_t rows, int64_t cols,
                                     const uint8_t* dead, int64_t width,
                                     int64_t groups, int maxq, bool sym,
                                     bool mse, float* scales, int32_t* zeros) {
  const int64_t index = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (index >= rows * groups) return;
  const int64_t g = index / rows, r = index % rows;
  const int64_t first = g * width;
  const int n = static_cast<int>(min(width, cols - first));
  const float* row = w + r * cols + first;
  const uint8_t* d = dead == nullptr ? nullptr : dead + first;
  float s;
  int z;
  FindParams(
      n, maxq, sym, mse,
      [&](int k) { return d != nullptr && d[k] ? 0.0f : row[k]; }, s, z);
  scales[index] = s;
  zeros[index] = z;
}

// ---- Group parameters fitted as the solve reaches them. ----

// The CPU (U-form) fits a group on the running weights as they stand when
// the solve reaches it: w0_k - sum_{i<t} e_i U_ik. Here (V-form) the
// running weights at time t are P_k = w0_k + sum_{i<t} D_i Vn_ik, which
// agree with the CPU's only for k = t. Over a window [t, e) of columns the
// CPU's values are w0 + X, with X Vn[t:e, t:e] = P - w0 (Vn unit upper
// triangular): one triangular solve per window.

// diff[r][k] = running[r][t + k] - w0[r][t + k]; vw = Vn[t:e, t:e].
__global__ void WindowKernel(const float* running, const float* w0,
                             int64_t rows, int64_t cols, int64_t t, int width,
                             float* diff) {
  const int64_t k = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  const int64_t r = blockIdx.y;
  if (k >= width || r >= rows) return;
  diff[r * width + k] = running[r * cols + t + k] - w0[r * cols + t + k];
}

__global__ void WindowFactorKernel(const float* vhl, int64_t cols, int64_t t,
                                   int width, float* vw) {
  const int64_t k = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  const int64_t j = blockIdx.y;
  if (k >= width) return;
  const float* row = vhl + 3 * (t + j) * cols + t + k;
  vw[j * width + k] = row[0] + row[cols];
}

// Fits the groups that start at first_group * width_g ... on w0 + x (x: the
// solved window from column t), one thread per (group, row).
__global__ void FitWindowGroupsKernel(const float* w0, const float* x,
                                      int64_t rows, int64_t cols, int64_t t,
                                      int window, int64_t group_size,
                                      int64_t first_group, int groups, int maxq,
                                      bool sym, bool mse, float* scales,
                                      int32_t* zeros) {
  const int64_t index = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (index >= rows * groups) return;
  const int64_t g = first_group + index / rows, r = index % rows;
  const int64_t j = g * group_size;
  const int n = static_cast<int>(min(group_size, cols - j));
  const float* base = w0 + r * cols + j;
  const float* solved = x + r * window + (j - t);
  float s;
  int z;
  FindParams(
      n, maxq, sym, mse, [&](int k) { return base[k] + solved[k]; }, s, z);
  scales[g * rows + r] = s;
  zeros[g * rows + r] = z;
}

// ---- The column loop of one lazy block. ----

constexpr int kRowsPerCta = 64;

struct BlockArgs {
  const float* w0;          // [rows, cols] weights in solve order, dead zeroed.
  const float* w;           // [rows, cols] running weights, solve order.
  const float* v_block;     // [kB, kB] (BlockFactorKernel).
  const float* v_diagonal;  // [cols] V_kk.
  int64_t rows, cols;
  int64_t first;  // The block's first column (solve position).
  int count;      // Its columns.
  float* deltas;  // [rows, count, 3]: w0 - q split as D_hi, D_hi, D_lo.
  uint8_t* q;     // [rows, cols] levels, original column order.
  const int32_t* perm;
  int maxq;
  ParamMode mode;
  int64_t group_size;
  const float* scales;   // [groups, rows]: solve-order groups when fitted,
  const int32_t* zeros;  // original-order when static, one when per row.
  // kTable: [rows, cols] in solve order; levels in [level_min, level_max]
  // are stored as level - level_min.
  const float* steps = nullptr;
  const float* offsets = nullptr;
  int level_min = 0, level_max = 0;
  double* row_loss;  // [rows]: each row's proxy loss so far.
};

// quant/gptq.cc's GgufGrid::Quantize: the level of x on a step / offset
// grid, and its value (multiply and add rounded apart, as there).
__device__ __forceinline__ int TableLevel(float x, float step, float offset,
                                          int level_min, int level_max) {
  if (step == 0) return max(level_min, 0);
  const float q = nearbyintf(__fdiv_rn(__fsub_rn(x, offset), step));
  return static_cast<int>(fminf(fmaxf(q, static_cast<float>(level_min)),
                                static_cast<float>(level_max)));
}

// The block's part of Vn as the column kernel reads it, [kB, kB]: zero on
// and below the diagonal and past the block's columns.
__global__ void BlockFactorKernel(const float* vhl, int64_t cols, int64_t first,
                                  int count, int kb, float* v_block) {
  const int l = blockIdx.x * blockDim.x + threadIdx.x;
  const int k = blockIdx.y;
  if (l >= kb) return;
  const float* row = vhl + 3 * (first + k) * cols + first + l;
  v_block[k * kb + l] = k < l && l < count ? row[0] + row[cols] : 0.0f;
}

template <int kB>
struct BlockShared {
  float v[kB * kB];  // Vn of the block, zero on and below the diagonal.
  float v_diagonal[kB];
  int32_t perm[kB];
  float rows[kRowsPerCta][kB + 1];      // Running weights, originals, deltas.
  uint8_t levels[kRowsPerCta][kB + 4];  // Padded against bank conflicts.
};

// One thread per row: its kB running weights stay in registers (the loops
// are unrolled so that every index is a constant); the block's part of Vn
// is read from shared memory as a broadcast. Nothing is written to global
// memory inside the column loop, and all global traffic is coalesced
// through shared memory.
template <int kB>
__global__ void __launch_bounds__(kRowsPerCta)
    GptqBlockKernel(const BlockArgs a) {
  extern __shared__ __align__(16) unsigned char shared_bytes[];
  BlockShared<kB>& sh = *reinterpret_cast<BlockShared<kB>*>(shared_bytes);
  const int tid = threadIdx.x;
  const int64_t first_row = blockIdx.x * int64_t{kRowsPerCta};
  const int rows_here = static_cast<int>(
      min(static_cast<int64_t>(kRowsPerCta), a.rows - first_row));
  // Many loads in flight per thread: the prologue is latency-bound.
  const float4* v_block = reinterpret_cast<const float4*>(a.v_block);
  float4* v_shared = reinterpret_cast<float4*>(sh.v);
#pragma unroll 16
  for (int index = tid; index < kB * kB / 4; index += kRowsPerCta) {
    v_shared[index] = v_block[index];
  }
  for (int k = tid; k < kB; k += kRowsPerCta) {
    sh.v_diagonal[k] = k < a.count ? a.v_diagonal[a.first + k] : 0.0f;
    sh.perm[k] = k < a.count ? a.perm[a.first + k] : 0;
  }
  auto load_rows = [&](const float* source) {
    const int n = rows_here * a.count;
#pragma unroll 16
    for (int index = tid; index < n; index += kRowsPerCta) {
      const int r = index / a.count, k = index % a.count;
      sh.rows[r][k] = source[(first_row + r) * a.cols + a.first + k];
    }
    __syncthreads();
  };
  load_rows(a.w);
  float w[kB];
  float* mine = sh.rows[tid];
#pragma unroll
  for (int k = 0; k < kB; ++k) w[k] = k < a.count ? mine[k] : 0.0f;
  __syncthreads();
  load_rows(a.w0);
  const int64_t row = first_row + tid;
  if (tid < rows_here) {
    float scale = 0;
    int zero = 0;
    auto load_params = [&](int64_t g) {
      scale = a.scales[g * a.rows + row];
      zero = a.zeros[g * a.rows + row];
    };
    if (a.mode == ParamMode::kPerRow) load_params(0);
    double loss = 0;
#pragma unroll
    for (int k = 0; k < kB; ++k) {
      if (k < a.count) {
        const int64_t j = a.first + k;
        if (a.mode == ParamMode::kStatic) {
          load_params(sh.perm[k] / a.group_size);
        } else if (a.mode == ParamMode::kFitted &&
                   (k == 0 || j % a.group_size == 0)) {
          load_params(j / a.group_size);
        }
        const float x = w[k];
        int level;
        float value;
        if (a.mode == ParamMode::kTable) {
          const float step = a.steps[row * a.cols + j];
          const float offset = a.offsets[row * a.cols + j];
          level = TableLevel(x, step, offset, a.level_min, a.level_max);
          value = __fadd_rn(__fmul_rn(step, static_cast<float>(level)), offset);
          level -= a.level_min;
        } else {
          level = Level(x, scale, zero, a.maxq);
          value = scale * static_cast<float>(level - zero);
        }
        const float e = (x - value) * sh.v_diagonal[k];  // (x - q) / U_jj.
        loss += static_cast<double>(e) * e / 2;
        sh.levels[tid][k] = static_cast<uint8_t>(level);
        const float delta = mine[k] - value;
        w[k] = delta;
        const float* v = sh.v + k * kB;
#pragma unroll
        for (int l = (k + 1) & ~3; l < kB; ++l) w[l] += delta * v[l];
      }
    }
#pragma unroll
    for (int k = 0; k < kB; ++k) {
      if (k < a.count) mine[k] = w[k];
    }
    a.row_loss[row] += loss;  // One thread per row: the same every run.
  }
  __syncthreads();
  for (int r = 0; r < rows_here; ++r) {
    uint8_t* q = a.q + (first_row + r) * a.cols;
    for (int k = tid; k < a.count; k += kRowsPerCta) {
      q[sh.perm[k]] = sh.levels[r][k];
    }
    float* deltas = a.deltas + (first_row + r) * 3 * a.count;
    for (int index = tid; index < 3 * a.count; index += kRowsPerCta) {
      const float d = sh.rows[r][index / 3];
      const float hi = RoundToTf32(d);
      deltas[index] = index % 3 == 2 ? RoundToTf32(d - hi) : hi;
    }
  }
}

template <int kB>
absl::Status LaunchBlock(const CudaContext& context, const float* vhl,
                         float* v_block, BlockArgs args) {
  BlockFactorKernel<<<dim3((kB + 127) / 128, static_cast<unsigned>(args.count)),
                      128, 0, context.stream()>>>(vhl, args.cols, args.first,
                                                  args.count, kB, v_block);
  if (args.count < kB) {
    RETURN_IF_ERROR(
        CudaError(cudaMemsetAsync(v_block + args.count * kB, 0,
                                  (kB - args.count) * kB * sizeof(float),
                                  context.stream()),
                  "clearing the block's factor"));
  }
  args.v_block = v_block;
  constexpr int kShared = sizeof(BlockShared<kB>);
  RETURN_IF_ERROR(CudaError(
      cudaFuncSetAttribute(GptqBlockKernel<kB>,
                           cudaFuncAttributeMaxDynamicSharedMemorySize,
                           kShared),
      "configuring the GPTQ column kernel"));
  const unsigned ctas =
      static_cast<unsigned>((args.rows + kRowsPerCta - 1) / kRowsPerCta);
  GptqBlockKernel<kB><<<ctas, kRowsPerCta, kShared, context.stream()>>>(args);
  return CudaError(cudaGetLastError(), "launching the GPTQ column kernel");
}

// scale * (level - zero) in the original column order; g_idx picks the group.
__global__ void DequantizeKernel(const uint8_t* levels, const float* scales,
                                 const int32_t* zeros, const int32_t* g_idx,
                                 int64_t rows, int64_t cols, float* out) {
  const int64_t c = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  const int64_t r = blockIdx.y;
  if (c >= cols) return;
  const int64_t g = g_idx[c];
  out[r * cols + c] =
      scales[g * rows + r] *
      static_cast<float>(static_cast<int>(levels[r * cols + c]) -
                         zeros[g * rows + r]);
}

// Seconds between pairs of events recorded on the context's stream, summed
// per stage; does nothing without a profile to fill.
class StageClock {
 public:
  StageClock(const CudaContext& context, bool on)
      : stream_(context.stream()), on_(on) {}
  ~StageClock() {
    for (auto& [begin, end, total] : spans_) {
      cudaEventDestroy(begin);
      cudaEventDestroy(end);
    }
  }
  // Starts a span that adds to *total when Finish() is called.
  void Begin(double* total) {
    if (!on_) return;
    cudaEvent_t begin, end;
    cudaEventCreate(&begin);
    cudaEventCreate(&end);
    cudaEventRecord(begin, stream_);
    spans_.push_back({begin, end, total});
  }
  void End() {
    if (on_) cudaEventRecord(std::get<1>(spans_.back()), stream_);
  }
  void Finish() {
    if (!on_) return;
    cudaStreamSynchronize(stream_);
    for (auto& [begin, end, total] : spans_) {
      float ms = 0;
      cudaEventElapsedTime(&ms, begin, end);
      *total += ms / 1e3;
    }
  }

 private:
  cudaStream_t stream_;
  bool on_;
  std::vector<std::tuple<cudaEvent_t, cudaEvent_t, double*>> spans_;
};

// Round to nearest on fitted groups: one thread per weight.
__global__ void RtnLevelsKernel(const float* w, int64_t rows, int64_t cols,
                                int64_t width, const float* scales,
                                const int32_t* zeros, int maxq,
                                uint8_t* levels) {
  const int64_t c = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  const int64_t r = blockIdx.y;
  if (c >= cols) return;
  const int64_t g = c / width;
  levels[r * cols + c] = static_cast<uint8_t>(
      Level(w[r * cols + c], scales[g * rows + r], zeros[g * rows + r], maxq));
}

}  // namespace

absl::StatusOr<DeviceGptqResult> RtnQuantizeOnDevice(const CudaContext& context,
                                                     const float* w,
                                                     int64_t rows, int64_t cols,
                                                     int bits, int group_size,
                                                     bool sym, bool mse) {
  GptqOptions options;
  options.bits = bits;
  options.group_size = group_size;
  RETURN_IF_ERROR(CheckGptqArguments(rows, cols, cols * cols, options));
  RETURN_IF_ERROR(context.Activate());
  const cudaStream_t stream = context.stream();
  const int maxq = (1 << bits) - 1;
  const int64_t width = group_size < 0 ? cols : group_size;
  DeviceGptqResult result;
  result.rows = rows, result.cols = cols;
  result.groups = (cols + width - 1) / width;
  result.bits = bits, result.group_size = group_size;
  ASSIGN_OR_RETURN(result.scales,
                   DeviceBuffer::Allocate(context, result.groups * rows * 4,
                                          "the group scales"));
  ASSIGN_OR_RETURN(result.zeros,
                   DeviceBuffer::Allocate(context, result.groups * rows * 4,
                                          "the group zeros"));
  ASSIGN_OR_RETURN(result.levels,
                   DeviceBuffer::Allocate(context, rows * cols, "the levels"));
  const int64_t n = result.groups * rows;
  FitFixedGroupsKernel<<<static_cast<unsigned>((n + 127) / 128), 128, 0,
                         stream>>>(w, rows, cols, nullptr, width, result.groups,
                                   maxq, sym, mse, result.scales.as<float>(),
                                   result.zeros.as<int32_t>());
  RtnLevelsKernel<<<dim3(static_cast<unsigned>((cols + 255) / 256),
                         static_cast<unsigned>(rows)),
                    256, 0, stream>>>(
      w, rows, cols, width, result.scales.as<float>(),
      result.zeros.as<int32_t>(), maxq, result.levels.as<uint8_t>());
  RETURN_IF_ERROR(CudaError(cudaGetLastError(), "rounding to nearest"));
  result.g_idx.resize(static_cast<size_t>(cols));
  for (int64_t c = 0; c < cols; ++c) {
    result.g_idx[c] = static_cast<int32_t>(c / width);
  }
  RETURN_IF_ERROR(context.Synchronize("rounding to nearest"));
  return result;
}

absl::StatusOr<GptqFactor> FactorGptqHessian(const CudaContext& context,
                                             const double* hessian,
                                             int64_t cols,
                                             const GptqOptions& options) {
  RETURN_IF_ERROR(CheckGptqArguments(1, cols, cols * cols, options));
  RETURN_IF_ERROR(context.Activate());
  const cudaStream_t stream = context.stream();
  GptqFactor factor;
  factor.cols = cols;
  factor.desc_act = options.desc_act;
  factor.damp_percent = options.damp_percent;
  factor.damp_auto_increment = options.damp_auto_increment;

  // The diagonal decides dead inputs, the act-order and the dampening.
  std::vector<double> diagonal(static_cast<size_t>(cols));
  RETURN_IF_ERROR(
      CudaError(cudaMemcpy2DAsync(diagonal.data(), sizeof(double), hessian,
                                  (cols + 1) * sizeof(double), sizeof(double),
                                  cols, cudaMemcpyDeviceToHost, stream),
                "reading the Hessian's diagonal"));
  RETURN_IF_ERROR(context.Synchronize("reading the Hessian's diagonal"));
  std::vector<uint8_t> dead(static_cast<size_t>(cols));
  for (int64_t j = 0; j < cols; ++j) {
    dead[j] = diagonal[j] == 0;
    if (dead[j]) diagonal[j] = 1;
  }
  std::vector<int32_t>& perm = factor.perm;
  perm.resize(static_cast<size_t>(cols));
  std::iota(perm.begin(), perm.end(), 0);
  if (options.desc_act) {
    std::stable_sort(perm.begin(), perm.end(), [&](int32_t a, int32_t b) {
      return diagonal[a] > diagonal[b];
    });
  }
  double mean_diagonal = 0;
  for (int32_t j : perm) mean_diagonal += diagonal[j];
  mean_diagonal /= static_cast<double>(cols);

  ASSIGN_OR_RETURN(factor.perm_d,
                   DeviceBuffer::Allocate(context, cols * 4, "the act-order"));
  ASSIGN_OR_RETURN(factor.dead,
                   DeviceBuffer::Allocate(context, cols, "the dead inputs"));
  RETURN_IF_ERROR(CopyToDevice(context, factor.perm_d.as<void>(), perm.data(),
                               cols * 4, "the act-order"));
  RETURN_IF_ERROR(CopyToDevice(context, factor.dead.as<void>(), dead.data(),
                               cols, "the dead inputs"));

  ASSIGN_OR_RETURN(DeviceBuffer hr,
                   DeviceBuffer::Allocate(context, cols * cols * 8,
                                          "the Hessian's factorization"));
  ASSIGN_OR_RETURN(DeviceBuffer info,
                   DeviceBuffer::Allocate(context, sizeof(int), "status"));
  cusolverDnParams_t params;
  RETURN_IF_ERROR(
      CusolverError(cusolverDnCreateParams(&params), "creating parameters"));
  struct ParamsDeleter {
    cusolverDnParams_t p;
    ~ParamsDeleter() { cusolverDnDestroyParams(p); }
  } params_deleter{params};
  cusolverDnHandle_t solver = context.cusolver();
  size_t device_bytes = 0, host_bytes = 0;
  RETURN_IF_ERROR(CusolverError(
      cusolverDnXpotrf_bufferSize(solver, params, CUBLAS_FILL_MODE_UPPER, cols,
                                  CUDA_R_64F, hr.as<double>(), cols, CUDA_R_64F,
                                  &device_bytes, &host_bytes),
      "sizing the Cholesky workspace"));
  ASSIGN_OR_RETURN(
      DeviceBuffer work,
      DeviceBuffer::Allocate(context, static_cast<int64_t>(device_bytes),
                             "the factorization workspace"));
  std::vector<char> host_work(host_bytes);

  const dim3 grid(static_cast<unsigned>((cols + 255) / 256),
                  static_cast<unsigned>(cols));
  double percent = options.damp_percent;
  while (true) {
    ReversedHessianKernel<<<grid, 256, 0, stream>>>(
        hessian, cols, factor.perm_d.as<int32_t>(), factor.dead.as<uint8_t>(),
        percent * mean_diagonal, hr.as<double>());
    RETURN_IF_ERROR(CudaError(cudaGetLastError(), "preparing the Hessian"));
    RETURN_IF_ERROR(CusolverError(
        cusolverDnXpotrf(solver, params, CUBLAS_FILL_MODE_UPPER, cols,
                         CUDA_R_64F, hr.as<double>(), cols, CUDA_R_64F,
                         work.as<void>(), device_bytes, host_work.data(),
                         host_bytes, info.as<int>()),
        "factoring the Hessian"));
    int failed_at = 0;
    RETURN_IF_ERROR(CopyToHost(context, &failed_at, info.as<int>(), sizeof(int),
                               "the factorization's status"));
    if (failed_at == 0) break;
    percent += options.damp_auto_increment;
    if (percent > 1.0) {
      return absl::FailedPreconditionError(
          "the Hessian is not positive definite even with 100% dampening");
    }
  }
  factor.damp_percent_used = percent;
  ASSIGN_OR_RETURN(factor.vhl,
                   DeviceBuffer::Allocate(context, 3 * cols * cols * 4,
                                          "the Hessian's factor"));
  ASSIGN_OR_RETURN(factor.v_diagonal,
                   DeviceBuffer::Allocate(context, cols * 4,
                                          "the Hessian factor's diagonal"));
  ExtractVKernel<<<grid, 256, 0, stream>>>(hr.as<double>(), cols,
                                           factor.vhl.as<float>(),
                                           factor.v_diagonal.as<float>());
  RETURN_IF_ERROR(CudaError(cudaGetLastError(), "extracting V"));
  // hr and the workspace are freed on return: let the work finish first.
  RETURN_IF_ERROR(context.Synchronize("factoring the Hessian"));
  return factor;
}

namespace {

// The solve; with `grid` on a GGUF type's grid (options.bits and group_size
// then unused), whose groups are fitted on the host as the solve reaches
// them, from the window solve's running weights.
absl::StatusOr<DeviceGptqResult> Solve(const CudaContext& context,
                                       const GptqFactor& factor, const float* w,
                                       int64_t rows, const GptqOptions& options,
                                       GgufSolveGrid* grid, float* dequantized,
                                       GptqSolveProfile* profile) {
  const int64_t cols = factor.cols;
  if (factor.desc_act != options.desc_act ||
      factor.damp_percent != options.damp_percent ||
      factor.damp_auto_increment != options.damp_auto_increment) {
    return absl::InvalidArgumentError(
        "the Hessian was factored with other act-order or dampening options");
  }
  RETURN_IF_ERROR(context.Activate());
  const cudaStream_t stream = context.stream();
  const int maxq = (1 << options.bits) - 1;
  const int64_t gs = grid != nullptr ? grid->group_width() : options.group_size;
  StageClock clock(context, profile != nullptr);
  const int32_t* perm = factor.perm_d.as<int32_t>();
  const uint8_t* dead = factor.dead.as<uint8_t>();
  const float* vhl = factor.vhl.as<float>();

  ASSIGN_OR_RETURN(DeviceBuffer originals,
                   DeviceBuffer::Allocate(context, rows * cols * 4,
                                          "the weights in solve order"));
  ASSIGN_OR_RETURN(
      DeviceBuffer running,
      DeviceBuffer::Allocate(context, rows * cols * 4, "the running weights"));
  PermuteWeightsKernel<<<dim3(static_cast<unsigned>((cols + 255) / 256),
                              static_cast<unsigned>(rows)),
                         256, 0, stream>>>(w, cols, perm, dead,
                                           originals.as<float>());
  RETURN_IF_ERROR(CudaError(cudaGetLastError(), "permuting the weights"));
  RETURN_IF_ERROR(CudaError(
      cudaMemcpyAsync(running.as<void>(), originals.as<void>(), rows * cols * 4,
                      cudaMemcpyDeviceToDevice, stream),
      "copying the weights"));

  ParamMode mode = ParamMode::kFitted;
  if (grid != nullptr) {
    mode = ParamMode::kTable;
  } else if (gs < 0) {
    mode = ParamMode::kPerRow;
  } else if (options.static_groups) {
    mode = ParamMode::kStatic;
  }
  const int64_t width = gs <= 0 ? cols : gs;
  const int64_t groups = (cols + width - 1) / width;
  DeviceGptqResult result;
  ASSIGN_OR_RETURN(
      result.scales,
      DeviceBuffer::Allocate(context, groups * rows * 4, "the group scales"));
  ASSIGN_OR_RETURN(
      result.zeros,
      DeviceBuffer::Allocate(context, groups * rows * 4, "the group zeros"));
  float* const scales = result.scales.as<float>();
  int32_t* const zeros = result.zeros.as<int32_t>();
  // A GGUF grid: each weight's step and offset, in solve order, fitted on
  // the host from the weights as they are in original order (dead inputs
  // zeroed): all up front, or group by group as the solve reaches them.
  DeviceBuffer steps, offsets;
  std::vector<float> originals_host;
  const bool table_fitted = mode == ParamMode::kTable && gs > 0;
  if (mode == ParamMode::kTable) {
    ASSIGN_OR_RETURN(steps, DeviceBuffer::Allocate(context, rows * cols * 4,
                                                   "the grid's steps"));
    ASSIGN_OR_RETURN(offsets, DeviceBuffer::Allocate(context, rows * cols * 4,
                                                     "the grid's offsets"));
    originals_host.resize(static_cast<size_t>(rows * cols));
    std::vector<uint8_t> dead_host(static_cast<size_t>(cols));
    RETURN_IF_ERROR(CopyToHost(context, originals_host.data(), w,
                               rows * cols * 4, "the weights"));
    RETURN_IF_ERROR(
        CopyToHost(context, dead_host.data(), dead, cols, "the dead inputs"));
    for (int64_t j = 0; j < cols; ++j) {
      if (dead_host[j] == 0) continue;
      for (int64_t r = 0; r < rows; ++r) originals_host[r * cols + j] = 0;
    }
    if (!table_fitted) {
      RETURN_IF_ERROR(grid->FitUpFront(originals_host.data()));
      std::vector<float> in_order(static_cast<size_t>(rows * cols));
      for (const auto& [host, device, what] :
           {std::make_tuple(grid->steps(), &steps, "the grid's steps"),
            std::make_tuple(grid->offsets(), &offsets, "the grid's offsets")}) {
        for (int64_t r = 0; r < rows; ++r) {
          for (int64_t j = 0; j < cols; ++j) {
            in_order[r * cols + j] = host[r * cols + factor.perm[j]];
          }
        }
        RETURN_IF_ERROR(CopyToDevice(context, device->as<void>(),
                                     in_order.data(), rows * cols * 4, what));
      }
    }
  }
  if (mode != ParamMode::kFitted && mode != ParamMode::kTable) {
    const int64_t n = groups * rows;
    FitFixedGroupsKernel<<<static_cast<unsigned>((n + 127) / 128), 128, 0,
                           stream>>>(w, rows, cols, dead, width, groups, maxq,
                                     options.sym, options.mse, scales, zeros);
    RETURN_IF_ERROR(CudaError(cudaGetLastError(), "fitting the groups"));
  }

  // The block schedule. As on the CPU, blocks hold whole groups when groups
  // are smaller; here blocks also start at every group start (unless groups
  // take the values as the block began), so a group is always fitted on
  // fully updated weights that the lazy products have already written.
  int64_t block = std::min<int64_t>(options.block_size, kMaxBlock);
  const bool fit_at_block_starts =
      (mode == ParamMode::kFitted && !options.group_params_at_block_start) ||
      table_fitted;
  if ((mode == ParamMode::kFitted || table_fitted) && gs < block) {
    block = fit_at_block_starts ? gs : (block / gs) * gs;
  }
  // A fitting window reaches from a block's start to the end of the last
  // group that starts in it; a GGUF grid's fit at a type block's start reads
  // the whole type block.
  const int64_t max_window =
      mode == ParamMode::kFitted ? std::min(cols, block + gs)
      : table_fitted ? std::min(cols, std::max(block, grid->block_size()))
                     : 0;
  std::vector<float> window_host(
      table_fitted ? static_cast<size_t>(rows * max_window) : 0);
  ASSIGN_OR_RETURN(result.levels,
                   DeviceBuffer::Allocate(context, rows * cols, "the levels"));
  ASSIGN_OR_RETURN(DeviceBuffer deltas,
                   DeviceBuffer::Allocate(context, rows * 3 * kMaxBlock * 4,
                                          "the block deltas"));
  ASSIGN_OR_RETURN(DeviceBuffer v_block,
                   DeviceBuffer::Allocate(context, kMaxBlock * kMaxBlock * 4,
                                          "the block's factor"));
  ASSIGN_OR_RETURN(DeviceBuffer window_values,
                   DeviceBuffer::Allocate(context, rows * max_window * 4,
                                          "the fitting window"));
  ASSIGN_OR_RETURN(DeviceBuffer window_factor,
                   DeviceBuffer::Allocate(context, max_window * max_window * 4,
                                          "the fitting window's factor"));
  ASSIGN_OR_RETURN(DeviceBuffer row_loss,
                   DeviceBuffer::Allocate(context, rows * 8, "the loss"));
  RETURN_IF_ERROR(
      CudaError(cudaMemsetAsync(row_loss.as<void>(), 0, rows * 8, stream),
                "clearing the loss"));

  BlockArgs args;
  args.w0 = originals.as<float>();
  args.w = running.as<float>();
  args.v_diagonal = factor.v_diagonal.as<float>();
  args.rows = rows, args.cols = cols;
  args.deltas = deltas.as<float>();
  args.q = result.levels.as<uint8_t>();
  args.perm = perm;
  args.maxq = maxq;
  args.mode = mode;
  args.group_size = width;
  args.scales = scales;
  args.zeros = zeros;
  if (mode == ParamMode::kTable) {
    args.steps = steps.as<float>();
    args.offsets = offsets.as<float>();
    args.level_min = grid->level_min();
    args.level_max = grid->level_max();
  }
  args.row_loss = row_loss.as<double>();

  const float one = 1.0f;
  for (int64_t i1 = 0; i1 < cols;) {
    int64_t i2 = std::min(i1 + block, cols);
    if (fit_at_block_starts) i2 = std::min(i2, (i1 / gs + 1) * gs);
    const int64_t first_group = (i1 + gs - 1) / std::max<int64_t>(gs, 1);
    if ((mode == ParamMode::kFitted || table_fitted) && first_group * gs < i2) {
      const int64_t last_group = (i2 - 1) / gs;
      int window = static_cast<int>(
          std::min(cols, std::max(i2, (last_group + 1) * gs)) - i1);
      if (table_fitted && i1 % grid->block_size() == 0) {
        window = static_cast<int>(std::min(cols - i1, grid->block_size()));
      }
      clock.Begin(profile ? &profile->fits_s : nullptr);
      WindowKernel<<<dim3(static_cast<unsigned>((window + 127) / 128),
                          static_cast<unsigned>(rows)),
                     128, 0, stream>>>(running.as<float>(),
                                       originals.as<float>(), rows, cols, i1,
                                       window, window_values.as<float>());
      WindowFactorKernel<<<dim3(static_cast<unsigned>((window + 127) / 128),
                                static_cast<unsigned>(window)),
                           128, 0, stream>>>(vhl, cols, i1, window,
                                             window_factor.as<float>());
      RETURN_IF_ERROR(CudaError(cudaGetLastError(), "preparing a window"));
      // Row-major X Vn = diff is column-major Vn^T X^T = diff^T, and the
      // row-major upper Vn is column-major lower.
      RETURN_IF_ERROR(CublasError(
          cublasStrsm(context.cublas(), CUBLAS_SIDE_LEFT,
                      CUBLAS_FILL_MODE_LOWER, CUBLAS_OP_N, CUBLAS_DIAG_UNIT,
                      window, static_cast<int>(rows), &one,
                      window_factor.as<float>(), window,
                      window_values.as<float>(), window),
          "a fitting window's solve"));
      if (table_fitted) {
        // The group's fit on the host, on the CPU's running weights
        // (originals + the window's solution), its grid back to the device.
        RETURN_IF_ERROR(CopyToHost(context, window_host.data(),
                                   window_values.as<void>(), rows * window * 4,
                                   "a fitting window"));
        const float* x = window_host.data();
        RETURN_IF_ERROR(grid->FitGroup(i1, gs, [&](int64_t r, int64_t k) {
          return originals_host[r * cols + i1 + k] + x[r * window + k];
        }));
        for (const auto& [host, device] :
             {std::make_pair(grid->steps(), &steps),
              std::make_pair(grid->offsets(), &offsets)}) {
          RETURN_IF_ERROR(
              CudaError(cudaMemcpy2DAsync(device->as<float>() + i1, cols * 4,
                                          host + i1, cols * 4, gs * 4, rows,
                                          cudaMemcpyHostToDevice, stream),
                        "copying a group's grid to the GPU"));
        }
        // The host arrays change at the next fit: the copies finish first.
        RETURN_IF_ERROR(context.Synchronize("copying a group's grid"));
      } else {
        const int count = static_cast<int>(last_group - first_group + 1);
        const int64_t n = rows * count;
        FitWindowGroupsKernel<<<static_cast<unsigned>((n + 127) / 128), 128, 0,
                                stream>>>(
            originals.as<float>(), window_values.as<float>(), rows, cols, i1,
            window, gs, first_group, count, maxq, options.sym, options.mse,
            scales, zeros);
        RETURN_IF_ERROR(CudaError(cudaGetLastError(), "fitting groups"));
      }
      clock.End();
    }
    args.first = i1;
    args.count = static_cast<int>(i2 - i1);
    clock.Begin(profile ? &profile->columns_s : nullptr);
    float* const v_scratch = v_block.as<float>();
    if (args.count <= 32) {
      RETURN_IF_ERROR(LaunchBlock<32>(context, vhl, v_scratch, args));
    } else if (args.count <= 64) {
      RETURN_IF_ERROR(LaunchBlock<64>(context, vhl, v_scratch, args));
    } else {
      RETURN_IF_ERROR(LaunchBlock<128>(context, vhl, v_scratch, args));
    }
    clock.End();
    if (i2 < cols) {
      // Row-major W[:, i2:] += D [rows, count] Vn[i1:i2, i2:], written
      // column-major as W^T[i2:, :] += Vn[i1:i2, i2:]^T D^T, on TF32 tensor
      // cores with each operand split in two (hi*hi + lo*hi + hi*lo: the
      // error of FP32 at several times its speed).
      clock.Begin(profile ? &profile->updates_s : nullptr);
      RETURN_IF_ERROR(CublasError(
          cublasGemmEx(context.cublas(), CUBLAS_OP_N, CUBLAS_OP_N,
                       static_cast<int>(cols - i2), static_cast<int>(rows),
                       3 * args.count, &one, vhl + 3 * i1 * cols + i2,
                       CUDA_R_32F, static_cast<int>(cols), deltas.as<float>(),
                       CUDA_R_32F, 3 * args.count, &one,
                       running.as<float>() + i2, CUDA_R_32F,
                       static_cast<int>(cols), CUBLAS_COMPUTE_32F_FAST_TF32,
                       CUBLAS_GEMM_DEFAULT),
          "a lazy update"));
      clock.End();
    }
    i1 = i2;
  }

  result.damp_percent_used = factor.damp_percent_used;
  result.rows = rows, result.cols = cols, result.groups = groups;
  result.bits = options.bits, result.group_size = options.group_size;
  result.g_idx.resize(static_cast<size_t>(cols));
  for (int64_t j = 0; j < cols; ++j) {
    const int64_t column = factor.perm[j];
    result.g_idx[column] =
        static_cast<int32_t>(mode == ParamMode::kPerRow   ? 0
                             : mode == ParamMode::kStatic ? column / width
                                                          : j / width);
  }
  if (dequantized != nullptr) {
    ASSIGN_OR_RETURN(DeviceBuffer g_idx,
                     DeviceBuffer::Allocate(context, cols * 4, "g_idx"));
    RETURN_IF_ERROR(CopyToDevice(context, g_idx.as<void>(), result.g_idx.data(),
                                 cols * 4, "g_idx"));
    DequantizeKernel<<<dim3(static_cast<unsigned>((cols + 255) / 256),
                            static_cast<unsigned>(rows)),
                       256, 0, stream>>>(result.levels.as<uint8_t>(), scales,
                                         zeros, g_idx.as<int32_t>(), rows, cols,
                                         dequantized);
    RETURN_IF_ERROR(CudaError(cudaGetLastError(), "dequantizing"));
  }
  std::vector<double> losses(static_cast<size_t>(rows));
  RETURN_IF_ERROR(CopyToHost(context, losses.data(), row_loss.as<void>(),
                             rows * 8, "the loss"));
  result.loss = std::accumulate(losses.begin(), losses.end(), 0.0);
  clock.Finish();
  return result;
}

}  // namespace

absl::StatusOr<DeviceGptqResult> GptqSolveOnDevice(const CudaContext& context,
                                                   const GptqFactor& factor,
                                                   const float* w, int64_t rows,
                                                   const GptqOptions& options,
                                                   float* dequantized,
                                                   GptqSolveProfile* profile) {
  RETURN_IF_ERROR(CheckGptqArguments(rows, factor.cols,
                                     factor.cols * factor.cols, options));
  return Solve(context, factor, w, rows, options, nullptr, dequantized,
               profile);
}

absl::StatusOr<GptqResult> GptqSolveGgufOnDevice(
    const CudaContext& context, const GptqFactor& factor, const float* w,
    int64_t rows, GgmlType type, std::vector<float> importance,
    const GptqOptions& options, GptqSolveProfile* profile) {
  ASSIGN_OR_RETURN(std::unique_ptr<GgufSolveGrid> grid,
                   GgufSolveGrid::Create(type, rows, factor.cols,
                                         std::move(importance), options));
  // The grid decides the levels; the checks of one group per row at 8 bits
  // cover the rest of the options.
  GptqOptions checked = options;
  checked.bits = 8;
  checked.group_size = -1;
  checked.static_groups = false;
  RETURN_IF_ERROR(CheckGptqArguments(rows, factor.cols,
                                     factor.cols * factor.cols, checked));
  ASSIGN_OR_RETURN(
      const DeviceGptqResult solved,
      Solve(context, factor, w, rows, checked, grid.get(), nullptr, profile));
  std::vector<uint8_t> bytes(static_cast<size_t>(rows * factor.cols));
  RETURN_IF_ERROR(CopyToHost(context, bytes.data(), solved.levels.as<void>(),
                             rows * factor.cols, "the levels"));
  std::vector<int> levels(bytes.size());
  for (size_t i = 0; i < bytes.size(); ++i) {
    levels[i] = bytes[i] + grid->level_min();
  }
  GptqResult result;
  result.quantized = grid->Take(levels);
  result.loss = solved.loss;
  result.damp_percent_used = solved.damp_percent_used;
  return result;
}

absl::StatusOr<DeviceGptqResult> GptqQuantizeOnDevice(
    const CudaContext& context, const float* w, int64_t rows, int64_t cols,
    const double* hessian, const GptqOptions& options, float* dequantized,
    GptqSolveProfile* profile) {
  RETURN_IF_ERROR(CheckGptqArguments(rows, cols, cols * cols, options));
  const auto start = std::chrono::steady_clock::now();
  ASSIGN_OR_RETURN(const GptqFactor factor,
                   FactorGptqHessian(context, hessian, cols, options));
  if (profile != nullptr) {
    profile->factor_s +=
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
            .count();
  }
  return GptqSolveOnDevice(context, factor, w, rows, options, dequantized,
                           profile);
}

absl::StatusOr<GptqResult> DeviceGptqResult::Download(
    const CudaContext& context) const {
  GptqResult result;
  result.loss = loss;
  result.damp_percent_used = damp_percent_used;
  QuantizedLinear& out = result.quantized;
  out.rows = rows, out.cols = cols, out.bits = bits;
  out.group_size = group_size;
  out.q.resize(static_cast<size_t>(rows * cols));
  RETURN_IF_ERROR(CopyToHost(context, out.q.data(), levels.as<void>(),
                             rows * cols, "the levels"));
  out.scales.resize(static_cast<size_t>(groups * rows));
  out.zeros.resize(static_cast<size_t>(groups * rows));
  RETURN_IF_ERROR(CopyToHost(context, out.scales.data(), scales.as<void>(),
                             groups * rows * 4, "the scales"));
  RETURN_IF_ERROR(CopyToHost(context, out.zeros.data(), zeros.as<void>(),
                             groups * rows * 4, "the zeros"));
  out.g_idx = g_idx;
  return result;
}

absl::StatusOr<GptqResult> GptqQuantizeCuda(const CudaContext& context,
                                            const float* w, int64_t rows,
                                            int64_t cols,
                                            const std::vector<double>& hessian,
                                            const GptqOptions& options) {
  RETURN_IF_ERROR(CheckGptqArguments(
      rows, cols, static_cast<int64_t>(hessian.size()), options));
  ASSIGN_OR_RETURN(DeviceBuffer w_d,
                   DeviceBuffer::Allocate(context, rows * cols * 4, "weights"));
  ASSIGN_OR_RETURN(DeviceBuffer h_d,
                   DeviceBuffer::Allocate(context, cols * cols * 8, "Hessian"));
  RETURN_IF_ERROR(
      CopyToDevice(context, w_d.as<void>(), w, rows * cols * 4, "the weights"));
  RETURN_IF_ERROR(CopyToDevice(context, h_d.as<void>(), hessian.data(),
                               cols * cols * 8, "the Hessian"));
  ASSIGN_OR_RETURN(const DeviceGptqResult result,
                   GptqQuantizeOnDevice(context, w_d.as<float>(), rows, cols,
                                        h_d.as<double>(), options));
  return result.Download(context);
}

}  // namespace quant::cuda
