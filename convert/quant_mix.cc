#include "convert/quant_mix.h"

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace quant {
namespace {

using T = GgmlType;

bool Is(const QuantMix& mix, absl::string_view name) {
  return mix.name == name;
}

// llama.cpp's use_more_bits: the first and last eighth of the layers, and
// every third layer in between.
bool UseMoreBits(int64_t layer, int64_t layers) {
  return layer < layers / 8 || layer >= 7 * layers / 8 ||
         (layer - layers / 8) % 3 == 2;
}

int64_t BlockSize(GgmlType type) { return GetGgmlTypeTraits(type).block_size; }

// A type whose blocks fit rows of `columns` values.
GgmlType FallBack(GgmlType type, int64_t columns) {
  if (columns % BlockSize(type) == 0) return type;
  switch (type) {
    case T::kQ2_K:
    case T::kQ3_K:
      type = T::kQ4_0;
      break;
    case T::kQ4_K:
      type = T::kQ5_0;
      break;
    case T::kQ5_K:
      type = T::kQ5_1;
      break;
    case T::kQ6_K:
      type = T::kQ8_0;
      break;
    default:
      break;
  }
  return columns % BlockSize(type) == 0 ? type : T::kF16;
}

// The mix's choice for a quantizable matrix (before the fallback).
GgmlType ChooseQuantized(const QuantMix& mix, const MixModelInfo& model,
                         const GgufTensorPlan& tensor, bool tied_embeddings) {
  const std::string& name = tensor.gguf_name;
  const int64_t columns = tensor.hf_shape.back();
  GgmlType type = mix.base;
  const bool is_output = name == "output.weight";
  const bool is_embedding = name == "token_embd.weight";
  if (is_output || (tied_embeddings && is_embedding)) {
    if (columns % BlockSize(type) != 0) return T::kQ8_0;
    return type == T::kQ8_0 ? type : T::kQ6_K;
  }
  const int64_t layer = tensor.layer;
  const int64_t layers = model.num_layers;
  // llama.cpp's LLM_TYPE_70B: 80 layers with grouped-query attention.
  const bool is_70b = layers == 80 && (model.gguf_arch == "qwen2" ||
                                       model.num_heads != model.num_kv_heads);
  const int64_t gqa =
      model.num_kv_heads > 0 ? model.num_heads / model.num_kv_heads : 1;
  if (absl::StrContains(name, "attn_v.weight")) {
    if (Is(mix, "Q2_K")) {
      type = gqa >= 4 ? T::kQ4_K : T::kQ3_K;
    } else if (Is(mix, "Q3_K_M")) {
      type = layer < 2 ? T::kQ5_K : T::kQ4_K;
    } else if (Is(mix, "Q3_K_L")) {
      type = T::kQ5_K;
    } else if ((Is(mix, "Q4_K_M") || Is(mix, "Q5_K_M")) &&
               UseMoreBits(layer, layers)) {
      type = T::kQ6_K;
    } else if (Is(mix, "Q4_K_S") && layer < 4) {
      type = T::kQ5_K;
    }
    if (is_70b && (type == T::kQ3_K || type == T::kQ4_K)) type = T::kQ5_K;
  } else if (absl::StrContains(name, "ffn_down")) {
    if (Is(mix, "Q2_K")) {
      type = T::kQ3_K;
    } else if (Is(mix, "Q3_K_M")) {
      type = layer < layers / 16 ? T::kQ5_K : T::kQ4_K;
    } else if (Is(mix, "Q3_K_L")) {
      type = T::kQ5_K;
    } else if (Is(mix, "Q4_K_M")) {
      if (UseMoreBits(layer, layers)) type = T::kQ6_K;
    } else if (Is(mix, "Q5_K_M")) {
      if (UseMoreBits(layer, layers)) type = T::kQ6_K;
    } else if (Is(mix, "Q4_K_S")) {
      if (layer < layers / 8) type = T::kQ5_K;
    } else if ((Is(mix, "Q4_0") || Is(mix, "Q5_0")) && model.has_importance &&
               layer < layers / 8) {
      type = Is(mix, "Q4_0") ? T::kQ4_1 : T::kQ5_1;
    }
  } else if (absl::StrContains(name, "attn_output.weight")) {
    if (Is(mix, "Q2_K")) {
      type = T::kQ3_K;
    } else if (Is(mix, "Q3_K_M")) {
      type = T::kQ4_K;
    } else if (Is(mix, "Q3_K_L")) {
      type = T::kQ5_K;
    }
  }
  return type;
}

}  // namespace

const std::vector<QuantMix>& AllQuantMixes() {
  static const std::vector<QuantMix>* const mixes = new std::vector<QuantMix>{
      {"F32", 0, T::kF32},      {"F16", 1, T::kF16},
      {"BF16", 32, T::kBF16},   {"Q8_0", 7, T::kQ8_0},
      {"Q6_K", 18, T::kQ6_K},   {"Q5_K_M", 17, T::kQ5_K},
      {"Q5_K_S", 16, T::kQ5_K}, {"Q5_1", 9, T::kQ5_1},
      {"Q5_0", 8, T::kQ5_0},    {"Q4_K_M", 15, T::kQ4_K},
      {"Q4_K_S", 14, T::kQ4_K}, {"Q4_1", 3, T::kQ4_1},
      {"Q4_0", 2, T::kQ4_0},    {"Q3_K_L", 13, T::kQ3_K},
      {"Q3_K_M", 12, T::kQ3_K}, {"Q3_K_S", 11, T::kQ3_K},
      {"Q2_K", 10, T::kQ2_K},
  };
  return *mixes;
}

absl::StatusOr<QuantMix> ParseQuantMix(absl::string_view name) {
  std::vector<std::string> names;
  for (const QuantMix& mix : AllQuantMixes()) {
    if (absl::EqualsIgnoreCase(mix.name, name)) return mix;
    names.push_back(mix.name);
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown GGUF type \"", name,
                   "\"; choose one of: ", absl::StrJoin(names, ", ")));
}

std::vector<GgmlType> PlanMixTypes(const QuantMix& mix,
                                   const MixModelInfo& model,
                                   const std::vector<GgufTensorPlan>& tensors) {
  bool tied_embeddings = true;  // Until output.weight shows up.
  for (const GgufTensorPlan& tensor : tensors) {
    if (tensor.gguf_name == "output.weight") tied_embeddings = false;
  }
  const bool quantized = BlockSize(mix.base) > 1;
  std::vector<GgmlType> types;
  for (const GgufTensorPlan& tensor : tensors) {
    if (tensor.keep_f32 || tensor.hf_shape.size() < 2) {
      types.push_back(T::kF32);
      continue;
    }
    const GgmlType type =
        quantized ? ChooseQuantized(mix, model, tensor, tied_embeddings)
                  : mix.base;
    types.push_back(FallBack(type, tensor.hf_shape.back()));
  }
  return types;
}

}  // namespace quant
