// A whole model quantized block by block (the GPTQ paper's sequential
// order): block b is calibrated on the outputs of the already-quantized
// blocks < b. Memory holds one block's weights, its calibration statistics
// and the activations at one block boundary, never the whole model.
//
// The work directory makes a run resumable: after each block, the
// activations leaving it (exact F32) and the block's result are written
// atomically; a run started again on the same directory, with the same
// model, recipe and calibration, continues at the first block without a
// result and produces bit for bit the output of an uninterrupted run.
#ifndef QUANT_QUANTIZE_MODEL_H_
#define QUANT_QUANTIZE_MODEL_H_

#include <array>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "convert/quant_mix.h"
#include "format/ggml_type.h"
#include "format/model_config.h"
#include "format/safetensors.h"
#include "model/calibration.h"
#include "nlohmann/json.hpp"
#include "quant/awq.h"
#include "quant/block_quantizer.h"
#include "quant/gptq.h"

namespace quant {

enum class OutputFormat { kGptq, kAwq, kGguf };
absl::StatusOr<OutputFormat> ParseOutputFormat(absl::string_view name);

struct QuantizeModelOptions {
  std::string model_dir;  // HF checkpoint (config.json, safetensors).
  // gptq / awq: a directory to create; gguf: the .gguf file to write.
  std::string output;
  OutputFormat output_format = OutputFormat::kGptq;
  // GGUF only: the llama.cpp type or mix (Q4_K_M, Q4_0, ...). GPTQ solves
  // each linear on its GGUF type's own grid (the file holds the solution),
  // except in Q4_0, Q5_0 and Q8_0, whose blocks are GPTQ's symmetric
  // min-max groups of 32: solved in that format, written exactly. With
  // gguf_grid off, and for RTN / AWQ, each linear is solved in the nearest
  // checkpoint format and written exactly where the formats coincide, else
  // re-fitted into its type with the Hessian diagonal as importance.
  std::string gguf_type = "Q4_K_M";
  bool gguf_grid = true;

  QuantMethod method = QuantMethod::kGptq;
  WeightFormat weights;  // bits, group_size, sym (not for GGUF).
  GptqOptions gptq;      // desc_act, static_groups, damping, block_size.
  bool true_sequential = true;
  AwqOptions awq;
  CalibrationOptions calibration;  // samples == 0: data-free (RTN only).
  int64_t sequences_per_pass = 16;
  int64_t calibration_shards = 1;  // BlockRecipe's.
  // Where the blocks compute: "cpu" or "cuda" (GPU `device`); not part of
  // the recipe, so a resumed run may change it (each block's report says
  // which ran it).
  std::string backend = "cpu";
  int device = 0;

  std::string work_dir;       // Required: block results and activations.
  int stop_after_block = -1;  // >= 0: stop once that block is committed.

  // Held-out perplexity (the data README's method) of the FP model and of
  // the result, on each text; at most this many 512-token windows (< 0:
  // all).
  std::vector<std::string> eval_texts;
  int64_t eval_max_windows = -1;

  std::function<void(const std::string&)> log;  // Progress lines; optional.
  // AssembleOutput asks before each block; yes stops it with Cancelled.
  // Optional.
  std::function<bool()> cancelled;
};

struct QuantizeModelResult {
  bool finished = false;     // False when stopped by stop_after_block.
  int blocks_quantized = 0;  // By this call.
  int blocks_resumed = 0;    // Found committed in the work directory.
  nlohmann::json report;     // Also written beside the output.
  std::string report_table;  // The readable table.
};

absl::StatusOr<QuantizeModelResult> QuantizeModel(
    const QuantizeModelOptions& options);

// The pieces QuantizeModel is made of, shared with the distributed service
// (whose coordinator plans and assembles, and whose workers run blocks).

// What a run will do, fixed before any work: the checked options, the
// model, the recipe as recorded in the work directory, and each block's
// recipe.
struct QuantizationPlan {
  ModelSpec spec;
  nlohmann::json recipe;
  std::vector<BlockRecipe> block_recipes;
  SafetensorsDType norm_dtype = SafetensorsDType::kF32;  // As stored.
  // GGUF output: the type of every tensor, and the mix.
  std::map<std::string, GgmlType> gguf_types;
  std::optional<QuantMix> mix;
  // Per block and linear, the GGUF type it is written in (GGUF only).
  std::vector<std::array<std::optional<GgmlType>, kBlockLinears>> linear_types;
};
// InvalidArgument names the option at fault.
absl::StatusOr<QuantizationPlan> PlanQuantization(
    const QuantizeModelOptions& options);

// One block's recipe from the options, the model, the dtype it stores
// norms (and weights) in, and (GGUF output) the GGUF type of each of its
// linears. A linear the output cannot hold stays in floating point
// (BlockRecipe::keep_fp): in GGUF one whose type is not a quantized type
// (the conversion's F16 fallback for rows that do not split into blocks);
// in GPTQ v1 one whose in or out features are not multiples of 32 (the
// packed words); in AWQ GEMM one whose out features are not a multiple of
// 8 or whose in features are not whole groups. Groups that do not divide
// the in features in GPTQ end in a shorter group (ceil(in / group) groups,
// g_idx = column / group), as AutoGPTQ and GPTQModel quantize them.
absl::StatusOr<BlockRecipe> MakeBlockRecipe(
    const QuantizeModelOptions& options, const ModelSpec& spec,
    SafetensorsDType norm_dtype,
    const std::array<std::optional<GgmlType>, kBlockLinears>& linear_types);

// The work directory's files (QuantizeModel's layout, also the
// coordinator's per-job directory).
std::string BlockResultPath(const std::string& work_dir, int layer);
std::string ActivationsPath(const std::string& work_dir, int layer);
// Records the recipe in the work directory, or refuses one that holds a run
// with another recipe (FailedPrecondition naming the field that differs).
absl::Status ClaimWorkDir(const std::string& work_dir,
                          const nlohmann::json& recipe);

// Writes the output and its report (beside it) from the block results
// committed in options.work_dir, then the held-out perplexities the options
// ask for. `start` is when the run began (for the report's time).
absl::StatusOr<QuantizeModelResult> AssembleOutput(
    const QuantizeModelOptions& options, const QuantizationPlan& plan,
    std::chrono::steady_clock::time_point start);

}  // namespace quant

#endif  // QUANT_QUANTIZE_MODEL_H_
