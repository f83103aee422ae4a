// Where a block task computes. The CPU engine (QuantizeBlock, OpenBLAS and
// OpenMP) is the oracle; a GPU backend computes the same recipe with its own
// kernels and agrees with it within the numerics contract (levels nearly all
// identical, proxy loss within a fraction of a percent), not bit for bit.
// Formats, grids, packing and recipes are shared: only kernels differ.
//
// Backends other than the CPU's live in their own libraries and register a
// factory here (the CUDA one: kernels/cuda/block_backend_cuda.h), so that a
// build without them still builds everything else and names what is missing.
#ifndef QUANT_BLOCK_BACKEND_H_
#define QUANT_BLOCK_BACKEND_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "kernels/cpu/compute_kernel.h"
#include "model/llama_forward.h"
#include "quant/block_quantizer.h"

namespace quant {

class BlockBackend {
 public:
  virtual ~BlockBackend() = default;

  // What computes here: the backend ("cpu", "cuda") and its kernel class
  // (the BLAS and threads; the GPU model and device).
  virtual ComputeKernel kernel() const = 0;
  // Device memory a task may use (0: the host's; no separate device).
  virtual int64_t device_memory_bytes() const = 0;
  // Empty when this backend computes `recipe` itself, else why not (the
  // caller then runs it on the CPU engine).
  virtual std::string Unsupported(const BlockRecipe& recipe) const = 0;

  // QuantizeBlock's contract (block_quantizer.h).
  virtual absl::StatusOr<BlockResult> QuantizeBlock(const LlamaForward& forward,
                                                    DecoderBlockWeights block,
                                                    const BlockRecipe& recipe,
                                                    int64_t sequences,
                                                    int64_t seq_len,
                                                    float* hidden) = 0;
  // ForwardBlockInPasses's contract.
  virtual absl::Status ForwardBlock(const LlamaForward& forward,
                                    const DecoderBlockWeights& block,
                                    int64_t sequences, int64_t seq_len,
                                    int64_t sequences_per_pass,
                                    float* hidden) = 0;

  // Data-parallel calibration's pieces (GPTQ and RTN, every backend):
  // CaptureStageStatistics' and SolveStage's contracts (block_quantizer.h).
  virtual absl::StatusOr<BlockStatistics> CaptureStageStatistics(
      const LlamaForward& forward, const DecoderBlockWeights& weights,
      const BlockRecipe& recipe, int stage, int64_t sequences, int64_t seq_len,
      const float* hidden) = 0;
  virtual absl::Status SolveStage(const BlockRecipe& recipe, int stage,
                                  const BlockStatistics& statistics,
                                  BlockResult& partial) = 0;
};

// The CPU engine behind the interface.
class CpuBlockBackend : public BlockBackend {
 public:
  ComputeKernel kernel() const override { return CpuComputeKernel(); }
  int64_t device_memory_bytes() const override { return 0; }
  std::string Unsupported(const BlockRecipe&) const override { return ""; }
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
};

// One task slot over several devices of one kernel class (the GPUs of one
// host, `quant-worker --devices_per_task N`): a block task whose recipe has
// calibration shards is calibrated data-parallel across them inside the
// task (QuantizeBlockInStages over the group: shard k on device k % N, the
// statistics merged on the host in shard order, the solves on the first),
// and forwards split their passes across them. Bit for bit what one of
// them computes with the same recipe, so a job run on a group equals the
// same job on one GPU or as capture / solve / forward tasks over workers.
//
// What cannot be split runs on the first device alone: a recipe without
// shards, AWQ (its search reads the whole calibration set), and the
// data-parallel pieces a coordinator hands out one by one.
class DeviceGroupBackend : public BlockBackend {
 public:
  // InvalidArgument for no members, or for members of different backends
  // or kernel classes (different GPU models), whose shards would not add up
  // to what one of them computes.
  static absl::StatusOr<std::unique_ptr<DeviceGroupBackend>> Create(
      std::vector<std::unique_ptr<BlockBackend>> members);

  int size() const { return static_cast<int>(members_.size()); }

  // The first member's backend and kernel, naming every member's device
  // ("NVIDIA H100 80GB HBM3 (GPUs 0+1, sm_90, 79.2 GiB)"; "... x 2" for
  // members without a device index).
  ComputeKernel kernel() const override;
  // The smallest member's: each device holds a task's worst case.
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

 private:
  explicit DeviceGroupBackend(
      std::vector<std::unique_ptr<BlockBackend>> members);
  std::vector<BlockBackend*> Members() const;

  std::vector<std::unique_ptr<BlockBackend>> members_;
};

// Makes the backend on device `device` (ignored by the CPU's).
using BlockBackendFactory =
    std::function<absl::StatusOr<std::unique_ptr<BlockBackend>>(int device)>;

// Adds (or replaces) the factory of backend `name`.
void RegisterBlockBackend(absl::string_view name, BlockBackendFactory factory);

// "cpu" always works; another name needs its factory registered:
// FailedPrecondition names a known backend this build lacks, InvalidArgument
// an unknown name. The factory's errors pass through (Unavailable for a
// missing or busy GPU).
absl::StatusOr<std::unique_ptr<BlockBackend>> MakeBlockBackend(
    absl::string_view name, int device = 0);

// "0,1,3" -> {0, 1, 3}: GPU indices, each once; InvalidArgument otherwise.
absl::StatusOr<std::vector<int>> ParseDeviceList(absl::string_view list);

// `devices` in task slots of `per_task` consecutive ones ({0,1,2,3}, 2 ->
// {{0,1},{2,3}}); InvalidArgument unless per_task divides their number.
absl::StatusOr<std::vector<std::vector<int>>> GroupDevices(
    const std::vector<int>& devices, int per_task);

// MakeBlockBackend of each device of `group`: that backend for one, a
// DeviceGroupBackend of them for several.
absl::StatusOr<std::unique_ptr<BlockBackend>> MakeBlockBackendGroup(
    absl::string_view name, const std::vector<int>& group);

// QuantizeBlock's contract for GPTQ and RTN from `backend`'s pieces: each
// stage captured shard by shard (the recipe's calibration_shards), merged in
// shard order and solved (RunCalibrationStages), then the quantized block's
// forward in passes. What a data-parallel job computes on workers of
// `backend`'s kernel class, bit for bit.
absl::StatusOr<BlockResult> QuantizeBlockInStages(
    BlockBackend& backend, const LlamaForward& forward,
    DecoderBlockWeights block, const BlockRecipe& recipe, int64_t sequences,
    int64_t seq_len, float* hidden);
// The same over several backends of one kernel class (the GPUs of one
// host): shard k captured on backends[k % n], n shards at once; the merge in
// shard order and the solves on backends[0]; the quantized block's forward
// split over them (ForwardBlockAcross). The same bits as one of them.
absl::StatusOr<BlockResult> QuantizeBlockInStages(
    const std::vector<BlockBackend*>& backends, const LlamaForward& forward,
    DecoderBlockWeights block, const BlockRecipe& recipe, int64_t sequences,
    int64_t seq_len, float* hidden);

// ForwardBlockInPasses's contract over several backends at once: each runs
// a run of whole passes (CalibrationShard of as many shards as there are
// backends, or passes if fewer), so every pass is the one a single backend
// would run.
absl::Status ForwardBlockAcross(const std::vector<BlockBackend*>& backends,
                                const LlamaForward& forward,
                                const DecoderBlockWeights& block,
                                int64_t sequences, int64_t seq_len,
                                int64_t sequences_per_pass, float* hidden);

// Runs `recipe` on `backend` when it can, else on `cpu`; the result's
// backend and kernel say which ran it.
absl::StatusOr<BlockResult> QuantizeBlockOn(
    BlockBackend& backend, BlockBackend& cpu, const LlamaForward& forward,
    DecoderBlockWeights block, const BlockRecipe& recipe, int64_t sequences,
    int64_t seq_len, float* hidden);

}  // namespace quant

#endif  // QUANT_BLOCK_BACKEND_H_
