// Quantized Hugging Face checkpoints: writing the GPTQ v1 and AWQ GEMM
// layouts (quant/packing.h) as a model directory that transformers, vLLM
// and ExLlama load, and reading them back as float weights (for held-out
// perplexity of exactly what was written).
#ifndef QUANT_CHECKPOINT_EXPORT_H_
#define QUANT_CHECKPOINT_EXPORT_H_

#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "format/model_config.h"
#include "format/safetensors.h"
#include "model/llama_forward.h"
#include "nlohmann/json.hpp"
#include "quant/block_quantizer.h"
#include "quant/block_store.h"

namespace quant {

enum class CheckpointLayout { kGptqV1, kAwqGemm };

struct QuantizationConfig {
  CheckpointLayout layout = CheckpointLayout::kGptqV1;
  int bits = 4;
  int group_size = 128;
  bool sym = false;  // GPTQ; AWQ's zero_point is !sym.
  bool desc_act = false;
  bool static_groups = false;
  bool true_sequential = true;
  double damp_percent = 0.01;
  // Block linears ("mlp.down_proj", ...) left in floating point in every
  // block (their shapes do not pack): AWQ's modules_to_not_convert; in GPTQ
  // the complement of modules_in_block_to_quantize, with GPTQModel's
  // negative "dynamic" rules beside it.
  std::vector<std::string> modules_kept_fp;
};

// The "quantization_config" object of config.json.
nlohmann::json QuantizationConfigJson(const QuantizationConfig& config);
// Reads config.json's quantization_config; nullopt for an FP checkpoint.
// InvalidArgument for a method or version this reader does not handle.
absl::StatusOr<std::optional<QuantizationConfig>> ReadQuantizationConfig(
    const std::string& model_dir);

// Writes `output_dir` (which must not exist; built under a temporary name
// and renamed when complete): config.json with quantization_config,
// quantize_config.json (GPTQ), the tokenizer files, and model.safetensors
// holding the packed linears of every block (read from `open_block(layer)`,
// one linear at a time), the norms as the blocks left them and every other
// tensor copied in its dtype. Linear biases are written as F16, as AutoGPTQ
// and AutoAWQ do.
absl::Status WriteQuantizedCheckpoint(const std::string& model_dir,
                                      const std::string& output_dir,
                                      const QuantizationConfig& config,
                                      const BlockResultOpener& open_block);

// Decoder block `layer` of a checkpoint written in `config`'s layout, as
// float weights (packed linears unpacked and dequantized; those the config
// keeps in floating point read as they are).
absl::StatusOr<DecoderBlockWeights> LoadQuantizedDecoderBlock(
    const SafetensorsCheckpoint& checkpoint, const ModelSpec& spec, int layer,
    const QuantizationConfig& config);

}  // namespace quant

#endif  // QUANT_CHECKPOINT_EXPORT_H_
