// The block task on one GPU (quant/block_backend.h): the calibration
// activations, the block's weights and the Hessians stay on the device; each
// true-sequential stage runs the block forward (forward_cuda.h) into the
// Hessians of the inputs it needs (hessian_cuda.h), the stage's linears are
// solved there (gptq_cuda.h; q, k and v share one factorization, as gate and
// up do) and computed with, quantized, by the stages after them; reports'
// errors are FP64 products on the device; the quantized block's outputs
// leave the device once, at the end.
//
// Computes RTN; GPTQ with every option on integer grids and on the GGUF
// types' grids (the blocks' and k-quant sub-blocks' fits on the host, the
// column loop and updates on the device); and AWQ (awq_cuda.h: the scale
// search's candidates and module outputs, the clipping search, the
// quantizer on the device; the grid of exponents and the fold of the scales
// into the block on the host, shared with the CPU engine).
//
// Data-parallel calibration's pieces run here too: a stage's statistics
// over a shard of the sequences, summed on the device in FP64 and taken to
// the host (merged there in shard order), and a stage's solves on the
// merged statistics. A sharded recipe's block is those pieces composed
// (QuantizeBlockInStages), so one GPU and a data-parallel job over GPU
// workers compute the same bits.
#ifndef KERNELS_CUDA_BLOCK_BACKEND_CUDA_H_
#define KERNELS_CUDA_BLOCK_BACKEND_CUDA_H_

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/cuda/cuda_context.h"
#include "quant/block_backend.h"

namespace quant::cuda {

class CudaBlockBackend : public BlockBackend {
 public:
  // Unavailable when the device cannot be used.
  static absl::StatusOr<std::unique_ptr<CudaBlockBackend>> Create(int device);

  ComputeKernel kernel() const override;
  int64_t device_memory_bytes() const override;
  std::string Unsupported(const BlockRecipe& recipe) const override;
  absl::StatusOr<BlockResult> QuantizeBlock(const LlamaForward& forward,
                                            DecoderBlockWeights block,
                                            const BlockRecipe& recipe,
                                            int64_t sequences, int64_t seq_len,
                                            float* hidden) override;
  absl::Status ForwardBlock(const LlamaForward& forward,
                            const DecoderBlockWeights& block, int64_t sequences,
                            int64_t seq_len, int64_t sequences_per_pass,
                            float* hidden) override;
  absl::StatusOr<BlockStatistics> CaptureStageStatistics(
      const LlamaForward& forward, const DecoderBlockWeights& weights,
      const BlockRecipe& recipe, int stage, int64_t sequences, int64_t seq_len,
      const float* hidden) override;
  absl::Status SolveStage(const BlockRecipe& recipe, int stage,
                          const BlockStatistics& statistics,
                          BlockResult& partial) override;

  const CudaContext& context() const { return *context_; }

  // Where the last QuantizeBlock's (or piece's) wall time went, by phase
  // (inputs up, capture forwards, Hessians, factor, solve, ...), in the order
  // the phases first ran.
  const std::vector<std::pair<std::string, double>>& last_phases() const {
    return last_phases_;
  }

 private:
  explicit CudaBlockBackend(std::unique_ptr<CudaContext> context)
      : context_(std::move(context)) {}
  std::unique_ptr<CudaContext> context_;
  std::vector<std::pair<std::string, double>> last_phases_;
};

// Registers "cuda" with MakeBlockBackend (call once, from main).
void RegisterCudaBlockBackend();

}  // namespace quant::cuda

#endif  // KERNELS_CUDA_BLOCK_BACKEND_CUDA_H_
