// GPTQ of one linear on the GPU, with the contract of quant::GptqQuantize
// (quant/gptq.h): the same options, argument checks and outputs, and the
// same solve (dead inputs zeroed, act-order, dampening increased until the
// factorization succeeds, groups fitted on the fully updated weights or, with
// group_params_at_block_start, as AutoGPTQ fits them, lazy batch updates).
//
// How it runs: one FP64 Cholesky factorization by cuSOLVER and no inverse.
// The CPU updates the running weights with the upper Cholesky factor U of
// H^-1 (w_k -= sum_j e_j U_jk, e_j = (w_j - q_j) / U_jj). With H = V V^T, V
// upper (J L J, where L L^T = J H J and J reverses the columns), U = V^-1,
// and the same running weights are w_k + sum_{j<k} (w0_j - q_j) V_jk / V_kk
// in terms of the original weights w0: potrf alone gives V, and the
// potrf + potri + potrf chain (or potrf + trtri) is never needed. The column
// loop of each lazy block is one kernel that keeps each row's block of
// running weights in registers and the block's part of V in shared memory;
// the lazy updates of the later columns are cuBLAS products on TF32 tensor
// cores with both operands split in two (3xTF32, FP32's accuracy). A group
// fitted as the solve reaches it sees the CPU's running weights, which
// differ from the V-form's until each column is reached: a triangular
// solve over the group's columns recovers them. Results
// agree with the CPU oracle within the numerics contract (quantized levels
// nearly all identical, proxy loss within a fraction of a percent), not bit
// for bit.
#ifndef KERNELS_CUDA_GPTQ_CUDA_H_
#define KERNELS_CUDA_GPTQ_CUDA_H_

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/cuda/cuda_context.h"
#include "quant/gptq.h"

namespace quant::cuda {

// Host memory in and out: w [rows, cols], hessian [cols, cols].
absl::StatusOr<GptqResult> GptqQuantizeCuda(const CudaContext& context,
                                            const float* w, int64_t rows,
                                            int64_t cols,
                                            const std::vector<double>& hessian,
                                            const GptqOptions& options);

// A solution left on the device: levels as bytes (bits <= 8) in the
// original column order, group parameters [groups, rows].
struct DeviceGptqResult {
  int64_t rows = 0, cols = 0, groups = 0;
  int bits = 0, group_size = 0;
  DeviceBuffer levels;  // uint8 [rows, cols].
  DeviceBuffer scales;  // float [groups, rows].
  DeviceBuffer zeros;   // int32 [groups, rows].
  std::vector<int32_t> g_idx;
  double loss = 0;
  double damp_percent_used = 0;

  // The solution as quant::GptqQuantize returns it.
  absl::StatusOr<GptqResult> Download(const CudaContext& context) const;
};

// H + damp I factored in the solve order. It depends on the Hessian and on
// desc_act, damp_percent and damp_auto_increment alone, so linears that read
// the same input (q, k and v; gate and up) share one.
struct GptqFactor {
  int64_t cols = 0;
  bool desc_act = false;
  double damp_percent = 0, damp_auto_increment = 0;  // As asked for.
  double damp_percent_used = 0;
  std::vector<int32_t> perm;  // Solve position -> input column.
  DeviceBuffer perm_d;        // int32 [cols].
  DeviceBuffer dead;          // uint8 [cols]: inputs that never fire.
  // float [cols, 3, cols]: Vn_jk = V_jk / V_kk (upper, unit diagonal) as
  // rows of its TF32 high part, the TF32 rest and the high part again.
  DeviceBuffer vhl;
  DeviceBuffer v_diagonal;  // float [cols]: V_kk.
};

// `hessian` is device memory [cols, cols]; it is left unchanged.
absl::StatusOr<GptqFactor> FactorGptqHessian(const CudaContext& context,
                                             const double* hessian,
                                             int64_t cols,
                                             const GptqOptions& options);

// Where a solve's time went, from CUDA events (costs a few microseconds per
// lazy block).
struct GptqSolveProfile {
  double factor_s = 0;   // Diagonal, act-order, potrf with any retries.
  double fits_s = 0;     // Groups fitted as the solve reaches them.
  double columns_s = 0;  // The column kernels.
  double updates_s = 0;  // The lazy products.
};

// Device memory in: w [rows, cols] stays unchanged. `dequantized`, when set,
// is device memory that receives scale * (q - zero) [rows, cols], the
// weights the quantized linear computes with. InvalidArgument when `factor`
// was made for other columns or other factorization options.
absl::StatusOr<DeviceGptqResult> GptqSolveOnDevice(
    const CudaContext& context, const GptqFactor& factor, const float* w,
    int64_t rows, const GptqOptions& options, float* dequantized = nullptr,
    GptqSolveProfile* profile = nullptr);

// GptqQuantizeGguf (quant/gptq.h) on the device: the solve on GGUF block
// type `type`'s own grid, whose blocks (and k-quant sub-blocks) are fitted
// on the host by the CPU's fitter as the solve reaches them, on the running
// weights a window solve recovers (up front with act-order or static
// groups); every column is rounded and its error fed forward on the device.
// `importance` is the Hessian's diagonal. The file's rows come back on the
// host.
absl::StatusOr<GptqResult> GptqSolveGgufOnDevice(
    const CudaContext& context, const GptqFactor& factor, const float* w,
    int64_t rows, GgmlType type, std::vector<float> importance,
    const GptqOptions& options, GptqSolveProfile* profile = nullptr);

// FactorGptqHessian, then GptqSolveOnDevice.
absl::StatusOr<DeviceGptqResult> GptqQuantizeOnDevice(
    const CudaContext& context, const float* w, int64_t rows, int64_t cols,
    const double* hessian, const GptqOptions& options,
    float* dequantized = nullptr, GptqSolveProfile* profile = nullptr);

// quant::RtnQuantize of device weights w [rows, cols]: min-max groups of
// consecutive columns (-1: whole rows), mse-shrunk when asked; loss and
// dampening are left at zero.
absl::StatusOr<DeviceGptqResult> RtnQuantizeOnDevice(
    const CudaContext& context, const float* w, int64_t rows, int64_t cols,
    int bits, int group_size, bool sym, bool mse = false);

}  // namespace quant::cuda

#endif  // KERNELS_CUDA_GPTQ_CUDA_H_
