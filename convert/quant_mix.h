// GGUF quantization mixes by llama.cpp's names (Q4_K_M, Q3_K_S, Q8_0, ...):
// which type each tensor of a model is stored in. The choices are the ones
// llama.cpp's llama-quantize makes for the llama and qwen2 architectures
// (dense models), so that a file made here has the tensor types, size and
// `general.file_type` of the same mix made by llama.cpp:
//   - norms, biases and other vectors stay F32;
//   - output.weight (and token_embd.weight when the embeddings are tied)
//     gets Q6_K in every quantized mix except Q8_0, or Q8_0 when its rows do
//     not split into the mix's blocks;
//   - attn_v, attn_output and ffn_down get more bits in some mixes and
//     layers (the first and last eighth of the layers and every third one
//     between them: "use_more_bits");
//   - a tensor whose rows do not split into its type's blocks falls back to
//     a type with smaller blocks (Q2_K/Q3_K -> Q4_0, Q4_K -> Q5_0,
//     Q5_K -> Q5_1, Q6_K -> Q8_0), or F16 when even those do not fit.
// The whole model is planned before any tensor is written.
#ifndef CONVERT_QUANT_MIX_H_
#define CONVERT_QUANT_MIX_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "format/ggml_type.h"
#include "format/llama_tensor_map.h"

namespace quant {

struct QuantMix {
  std::string name;        // "Q4_K_M", as llama.cpp spells it.
  uint32_t file_type = 0;  // `general.file_type` (llama.cpp's llama_ftype).
  GgmlType base = GgmlType::kF16;  // The type of most weight matrices.
};

// Every mix, in the order `quantctl help` lists them.
const std::vector<QuantMix>& AllQuantMixes();

// A mix by name, case-insensitive ("q4_k_m" works). InvalidArgument listing
// the known names otherwise.
absl::StatusOr<QuantMix> ParseQuantMix(absl::string_view name);

// What the per-tensor choices depend on besides the tensor itself.
struct MixModelInfo {
  std::string gguf_arch;  // "llama" or "qwen2".
  int64_t num_layers = 0;
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;
  // Importance weights (an imatrix) will be used: as in llama.cpp, Q4_0 and
  // Q5_0 then give the first eighth of ffn_down Q4_1 / Q5_1.
  bool has_importance = false;
};

// The type of each tensor of `tensors` (in order) under `mix`.
std::vector<GgmlType> PlanMixTypes(const QuantMix& mix,
                                   const MixModelInfo& model,
                                   const std::vector<GgufTensorPlan>& tensors);

}  // namespace quant

#endif  // CONVERT_QUANT_MIX_H_
