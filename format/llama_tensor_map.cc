#include "format/llama_tensor_map.h"

#include <cstdint>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/strings/strip.h"
#include "common/status_macros.h"

namespace quant {
namespace {

struct NameRule {
  const char* hf_suffix;             // After "model.layers.N.".
  const char* gguf_suffix;           // After "blk.N.".
  RowPermutation llama_permutation;  // Applied for gguf_arch "llama" only.
  bool keep_f32;
};

constexpr NameRule kLayerRules[] = {
    {"input_layernorm.weight", "attn_norm.weight", RowPermutation::kNone, true},
    {"self_attn.q_proj.weight", "attn_q.weight", RowPermutation::kRopeQ, false},
    {"self_attn.q_proj.bias", "attn_q.bias", RowPermutation::kRopeQ, true},
    {"self_attn.k_proj.weight", "attn_k.weight", RowPermutation::kRopeK, false},
    {"self_attn.k_proj.bias", "attn_k.bias", RowPermutation::kRopeK, true},
    {"self_attn.v_proj.weight", "attn_v.weight", RowPermutation::kNone, false},
    {"self_attn.v_proj.bias", "attn_v.bias", RowPermutation::kNone, true},
    {"self_attn.o_proj.weight", "attn_output.weight", RowPermutation::kNone,
     false},
    {"self_attn.o_proj.bias", "attn_output.bias", RowPermutation::kNone, true},
    {"post_attention_layernorm.weight", "ffn_norm.weight",
     RowPermutation::kNone, true},
    {"mlp.gate_proj.weight", "ffn_gate.weight", RowPermutation::kNone, false},
    {"mlp.up_proj.weight", "ffn_up.weight", RowPermutation::kNone, false},
    {"mlp.down_proj.weight", "ffn_down.weight", RowPermutation::kNone, false},
};

absl::StatusOr<GgufTensorPlan> PlanOne(const ModelSpec& spec,
                                       const ExpectedTensor& t) {
  GgufTensorPlan plan;
  plan.hf_name = t.name;
  plan.layer = t.layer;
  plan.hf_shape = t.shape;
  if (t.name == "model.embed_tokens.weight") {
    plan.gguf_name = "token_embd.weight";
    return plan;
  }
  if (t.name == "model.norm.weight") {
    plan.gguf_name = "output_norm.weight";
    plan.keep_f32 = true;
    return plan;
  }
  if (t.name == "lm_head.weight") {
    plan.gguf_name = "output.weight";
    return plan;
  }
  const std::string prefix = absl::StrCat("model.layers.", t.layer, ".");
  absl::string_view suffix = t.name;
  if (t.layer >= 0 && absl::ConsumePrefix(&suffix, prefix)) {
    for (const NameRule& rule : kLayerRules) {
      if (suffix != rule.hf_suffix) continue;
      plan.gguf_name = absl::StrCat("blk.", t.layer, ".", rule.gguf_suffix);
      plan.keep_f32 = rule.keep_f32;
      // Qwen2 uses NeoX-style rope in llama.cpp: rows stay as they are.
      plan.permutation = spec.gguf_arch == "llama" ? rule.llama_permutation
                                                   : RowPermutation::kNone;
      return plan;
    }
  }
  // ExpectedHfTensors and kLayerRules disagree: a bug here, not bad input.
  return absl::InternalError(absl::StrCat("no GGUF name for tensor ", t.name));
}

bool IsIgnorable(const ModelSpec& spec, absl::string_view name) {
  if (absl::EndsWith(name, ".rotary_emb.inv_freq")) return true;
  if (name == "lm_head.weight" && spec.tie_word_embeddings) return true;
  return false;
}

}  // namespace

absl::StatusOr<std::vector<GgufTensorPlan>> PlanGgufTensors(
    const ModelSpec& spec, const TensorShapeFn& shape_of) {
  if (spec.gguf_arch != "llama" && spec.gguf_arch != "qwen2") {
    return absl::UnimplementedError(
        absl::StrCat("no GGUF tensor map for arch \"", spec.gguf_arch, "\""));
  }
  RETURN_IF_ERROR(ValidateTensorShapes(spec, shape_of));
  std::vector<GgufTensorPlan> plans;
  for (const ExpectedTensor& t : ExpectedHfTensors(spec)) {
    ASSIGN_OR_RETURN(GgufTensorPlan plan, PlanOne(spec, t));
    plans.push_back(std::move(plan));
  }
  return plans;
}

absl::StatusOr<std::vector<GgufTensorPlan>> PlanGgufTensors(
    const ModelSpec& spec, const std::vector<std::string>& checkpoint_tensors,
    const TensorShapeFn& shape_of) {
  ASSIGN_OR_RETURN(std::vector<GgufTensorPlan> plans,
                   PlanGgufTensors(spec, shape_of));
  absl::flat_hash_set<absl::string_view> used;
  for (const GgufTensorPlan& p : plans) used.insert(p.hf_name);
  for (const std::string& name : checkpoint_tensors) {
    if (used.contains(name) || IsIgnorable(spec, name)) continue;
    return absl::InvalidArgumentError(absl::StrCat(
        "checkpoint tensor ", name, " is not used by ", spec.architecture,
        " (with this config.json); refusing to drop it silently"));
  }
  return plans;
}

int64_t RopePermutationHeads(const ModelSpec& spec,
                             RowPermutation permutation) {
  switch (permutation) {
    case RowPermutation::kRopeQ:
      return spec.num_heads;
    case RowPermutation::kRopeK:
      return spec.num_kv_heads;
    case RowPermutation::kNone:
      break;
  }
  return 0;
}

absl::Status PermuteRowsForRope(const void* in, void* out, int64_t rows,
                                int64_t row_bytes, int64_t n_head) {
  if (n_head <= 0 || rows <= 0 || row_bytes <= 0 || rows % (2 * n_head) != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "PermuteRowsForRope: ", rows, " rows of ", row_bytes,
        " bytes do not split into ", n_head, " heads of an even size"));
  }
  uint64_t total = 0;
  if (__builtin_mul_overflow(static_cast<uint64_t>(rows),
                             static_cast<uint64_t>(row_bytes), &total) ||
      total > (uint64_t{1} << 62)) {
    return absl::InvalidArgumentError(absl::StrCat("PermuteRowsForRope: ", rows,
                                                   " rows of ", row_bytes,
                                                   " bytes is too large"));
  }
  const auto* src = static_cast<const uint8_t*>(in);
  auto* dst = static_cast<uint8_t*>(out);
  const uintptr_t a = reinterpret_cast<uintptr_t>(in);
  const uintptr_t b = reinterpret_cast<uintptr_t>(out);
  if (a < b + total && b < a + total) {
    return absl::InvalidArgumentError(
        "PermuteRowsForRope: input and output overlap");
  }
  const int64_t head_dim = rows / n_head;
  const int64_t half = head_dim / 2;
  for (int64_t h = 0; h < n_head; ++h) {
    for (int64_t i = 0; i < half; ++i) {
      for (int64_t j = 0; j < 2; ++j) {
        const int64_t out_row = h * head_dim + 2 * i + j;
        const int64_t in_row = h * head_dim + j * half + i;
        std::memcpy(dst + out_row * row_bytes, src + in_row * row_bytes,
                    static_cast<size_t>(row_bytes));
      }
    }
  }
  return absl::OkStatus();
}

absl::Status PermuteRowsForRope(const float* in, float* out, int64_t rows,
                                int64_t cols, int64_t n_head) {
  if (cols <= 0 || cols > (int64_t{1} << 40)) {
    return absl::InvalidArgumentError(
        absl::StrCat("PermuteRowsForRope: bad column count ", cols));
  }
  return PermuteRowsForRope(static_cast<const void*>(in),
                            static_cast<void*>(out), rows,
                            cols * static_cast<int64_t>(sizeof(float)), n_head);
}

}  // namespace quant
