// One decoder block quantized on its calibration activations: the unit of
// work of the pipeline (and of a worker's layer job). Input: the block's FP
// weights and the activations entering it; output: each linear's integer
// solution, the weights the quantized block computes with, the calibration
// statistics the GGUF export uses as importance, a quality report, and the
// activations leaving the quantized block (the next block's input).
//
// Methods: RTN (min-max groups), GPTQ (with true-sequential stages q/k/v,
// o, gate/up, down, each calibrated on the outputs of the stages already
// quantized), AWQ (scales searched on the FP activations and folded into the
// norms / v / up, clipping search, then AutoAWQ's quantizer).
#ifndef QUANT_BLOCK_QUANTIZER_H_
#define QUANT_BLOCK_QUANTIZER_H_

#include <array>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "format/ggml_type.h"
#include "format/model_config.h"
#include "format/safetensors.h"
#include "model/llama_forward.h"
#include "quant/awq.h"
#include "quant/gptq.h"
#include "quant/hessian.h"

namespace quant {

// The linears of a decoder block, in the order of this array everywhere.
inline constexpr int kBlockLinears = 7;
inline constexpr std::array<absl::string_view, kBlockLinears>
    kBlockLinearNames = {"self_attn.q_proj", "self_attn.k_proj",
                         "self_attn.v_proj", "self_attn.o_proj",
                         "mlp.gate_proj",    "mlp.up_proj",
                         "mlp.down_proj"};
LinearWeights& BlockLinear(DecoderBlockWeights& block, int index);
const LinearWeights& BlockLinear(const DecoderBlockWeights& block, int index);

// GPTQ's true-sequential stages (q/k/v, o, gate/up, down), each calibrated
// on the outputs of the stages quantized before it.
const std::vector<std::vector<int>>& TrueSequentialStages();

// Linear `index`'s weight shape in a block of `spec`: rows = out_features,
// cols = in_features.
struct LinearShape {
  int64_t rows = 0, cols = 0;
};
LinearShape BlockLinearShape(const ModelSpec& spec, int index);

enum class QuantMethod { kRtn, kGptq, kAwq };
absl::StatusOr<QuantMethod> ParseQuantMethod(absl::string_view name);
absl::string_view QuantMethodName(QuantMethod method);

// A linear its output format cannot hold (a GGUF type that fell back to F16,
// a shape GPTQ or AWQ cannot pack): it stays in floating point, rounded to
// `dtype`, and the rest of the block is quantized around it.
struct KeptLinear {
  std::string reason;  // Why, for the report.
  SafetensorsDType dtype = SafetensorsDType::kF16;
};

struct BlockRecipe {
  QuantMethod method = QuantMethod::kGptq;
  std::array<WeightFormat, kBlockLinears> formats;
  std::array<std::optional<KeptLinear>, kBlockLinears> keep_fp;
  // desc_act, static_groups, mse (RTN too), damping and block_size (its
  // bits, group_size and sym are ignored: `formats` decides).
  GptqOptions gptq;
  // GPTQ solves the linears given a type here on that GGUF type's own grid
  // (GptqQuantizeGguf; `formats` then only labels the report).
  std::array<std::optional<GgmlType>, kBlockLinears> gguf_grid;
  bool true_sequential = true;
  AwqOptions awq;
  // Sequences run through the block at once (activation memory). Part of
  // the recipe because it fixes the shapes of every product: the same
  // recipe on the same kernel class gives the same bits.
  int64_t sequences_per_pass = 16;
  // The calibration set is summed in this many shards of whole passes
  // (CalibrationShard), each shard's statistics from zero, then added in
  // shard order: the order a data-parallel job sums its workers' partial
  // statistics in. Part of the recipe for the same reason as
  // sequences_per_pass: it fixes the order of every sum. GPTQ and RTN.
  int64_t calibration_shards = 1;
  // Norm weights changed by AWQ are rounded to this dtype (the one they are
  // stored in), so that the model calibrated is the model written.
  SafetensorsDType norm_dtype = SafetensorsDType::kF32;
};

struct LinearReport {
  std::string name;     // e.g. "self_attn.q_proj".
  std::string kept_fp;  // Non-empty: left in floating point, and why.
  int bits = 0;
  int group_size = 0;
  // With H the calibration Hessian of the linear's inputs and dW = Q - W:
  // 1/2 tr(dW H dW^T) (GPTQ's objective; NaN without calibration data) ...
  double proxy_loss = 0;
  // ... and ||W X - Q X|| / ||W X|| = sqrt(tr(dW H dW^T) / tr(W H W^T)).
  double relative_output_error = 0;
  double damp_percent = 0;  // GPTQ's dampening after automatic increases.
  double seconds = 0;
};

struct BlockResult {
  // The weights the quantized block computes with: every linear
  // dequantized; norms as AWQ left them.
  DecoderBlockWeights weights;
  std::array<QuantizedLinear, kBlockLinears> quantized;
  // Per linear, the Hessian diagonal (mean x^2 per input column, times 2),
  // for the GGUF export's importance; empty without calibration data.
  std::array<std::vector<float>, kBlockLinears> importance;
  std::array<LinearReport, kBlockLinears> reports;
  std::vector<double> awq_ratios;  // Per scaled group, the chosen exponent.
  double seconds = 0;
  // What computed it (kernels/cpu/compute_kernel.h).
  std::string backend, kernel;
};

// The block input linear `index` reads.
BlockInput LinearInput(int index);

// AWQ's groups of a block: linears scaled together and the input they
// share, whose module output (attention, MLP, or the linear) the search
// measures; in block order, each module reading only its own group's
// linears and later groups'. Groups whose linears all stay in floating point
// are left out.
struct AwqGroup {
  std::vector<int> linears;
  BlockInput input;
};
std::vector<AwqGroup> AwqGroups(const DecoderBlockWeights& block,
                                const BlockRecipe& recipe);

// Rounds the linears that stay in floating point to their stored dtype (they
// compute with their stored values).
void RoundKeptLinears(const BlockRecipe& recipe, DecoderBlockWeights& block);

// Folds a group's input-channel scales s into `block`: the producer of the
// input (a norm, rounded to `norm_dtype`; v; up) divided by s, the group's
// columns multiplied by it.
void FoldAwqScales(const AwqGroup& group, const std::vector<float>& s,
                   SafetensorsDType norm_dtype, DecoderBlockWeights& block);

// The start of every backend's block result: the weights, each linear's
// report labelled (name, bits, group; a kept linear's reason, zero error, its
// weights rounded to the dtype it is stored in). InvalidArgument for a bad
// calibration shape or a calibrated method without calibration data.
absl::StatusOr<BlockResult> StartBlockResult(DecoderBlockWeights block,
                                             const BlockRecipe& recipe,
                                             int64_t sequences,
                                             int64_t seq_len);

// Quantizes `block` on `hidden` [sequences * seq_len, hidden_size], the
// activations entering it, and replaces them with the quantized block's
// outputs. sequences == 0 is a data-free run (RTN only).
absl::StatusOr<BlockResult> QuantizeBlock(const LlamaForward& forward,
                                          DecoderBlockWeights block,
                                          const BlockRecipe& recipe,
                                          int64_t sequences, int64_t seq_len,
                                          float* hidden);

// Data-parallel calibration, the pieces QuantizeBlock composes for GPTQ and
// RTN: the service runs them as tasks on several workers (each capturing
// its shard's statistics, one solving the stage) and gets the same bits.

// Per block input (BlockInput order), the statistics of what it saw; empty
// for the inputs a stage does not read.
inline constexpr int kBlockInputs = 4;
using BlockStatistics =
    std::array<std::optional<HessianAccumulator>, kBlockInputs>;

// The stages whose statistics are captured and solved in turn: GPTQ with
// true_sequential q/k/v, o, gate/up, down; GPTQ otherwise and RTN every
// linear at once; AWQ none (its search reads the whole calibration set).
// Linears kept in floating point are left out (a stage may be empty).
std::vector<std::vector<int>> CalibrationStages(const BlockRecipe& recipe);
// Stage `stage`'s linears; InvalidArgument naming a stage that is not there.
absl::StatusOr<std::vector<int>> CalibrationStage(const BlockRecipe& recipe,
                                                  int stage);

struct SequenceRange {
  int64_t first = 0, count = 0;
};
// Shard `shard` of `shards`: whole passes of sequences_per_pass, as evenly
// as they go, the last (short) pass in the last shard. InvalidArgument when
// some shard would hold no pass.
absl::StatusOr<SequenceRange> CalibrationShard(int64_t sequences,
                                               int64_t sequences_per_pass,
                                               int64_t shards, int64_t shard);

// Runs `weights` (the block with the stages before `stage` solved) over
// `sequences` sequences of `hidden` and returns the statistics of the
// inputs stage `stage` reads.
absl::StatusOr<BlockStatistics> CaptureStageStatistics(
    const LlamaForward& forward, const DecoderBlockWeights& weights,
    const BlockRecipe& recipe, int stage, int64_t sequences, int64_t seq_len,
    const float* hidden);

// total += shard, input by input (InvalidArgument when they hold different
// inputs or widths). Shards are added in order, starting from shard 0's.
absl::Status MergeStatistics(const BlockStatistics& shard,
                             BlockStatistics& total);

// Solves stage `stage`'s linears on `statistics` (every shard's, merged)
// into `partial` (StartBlockResult's, with the stages before solved).
absl::Status SolveStage(const BlockRecipe& recipe, int stage,
                        const BlockStatistics& statistics,
                        BlockResult& partial);

// The stage loop of GPTQ and RTN, on any backend's pieces: for each stage,
// `capture` of every shard's sequences (shard k: CalibrationShard k of the
// recipe's calibration_shards; none without calibration data), merged in
// shard order, then `solve`. What QuantizeBlock and a sharded block on a
// GPU run, and what a data-parallel job's tasks compute on several workers.
// With `lanes` > 1 the shards are captured `lanes` at a time, each on a
// thread of its own (shard k in lane k % lanes, so that a lane's device is
// used by one thread at a time); the merge order is the same.
using StageCapture = std::function<absl::StatusOr<BlockStatistics>(
    int stage, int shard_index, const SequenceRange& shard)>;
using StageSolve =
    std::function<absl::Status(int stage, const BlockStatistics& statistics)>;
absl::Status RunCalibrationStages(const BlockRecipe& recipe, int64_t sequences,
                                  const StageCapture& capture,
                                  const StageSolve& solve, int lanes = 1);

// Whether linear i of `result` has its solution (or stays in floating
// point): false in a partial result for the stages not solved yet.
bool LinearSolved(const BlockResult& result, int i);

// Runs `block` over `hidden` in passes of `sequences_per_pass` sequences.
absl::Status ForwardBlockInPasses(const LlamaForward& forward,
                                  const DecoderBlockWeights& block,
                                  int64_t sequences, int64_t seq_len,
                                  int64_t sequences_per_pass, float* hidden);

}  // namespace quant

#endif  // QUANT_BLOCK_QUANTIZER_H_
