#include "format/llama_tensor_map.h"

#include <algorithm>
#include <cstdint>
#include <map>
#include <numeric>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace quant {
namespace {

using ::testing::ElementsAre;
using ::testing::ElementsAreArray;
using ::testing::HasSubstr;

// hidden 16, 2 heads of 8 (so q has 16 rows), 1 kv head (k/v have 8 rows).
ModelSpec TwoLayerSpec(const std::string& config_fields) {
  const std::string json = R"({)" + config_fields + R"(,
    "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2,
    "num_attention_heads": 2, "num_key_value_heads": 1, "vocab_size": 40})";
  absl::StatusOr<ModelSpec> spec = ParseModelConfig(json);
  EXPECT_TRUE(spec.ok()) << spec.status();
  return spec.ok() ? *spec : ModelSpec();
}

ModelSpec LlamaSpec() {
  return TwoLayerSpec(R"("architectures": ["LlamaForCausalLM"])");
}
ModelSpec QwenSpec() {
  return TwoLayerSpec(R"("architectures": ["Qwen2ForCausalLM"])");
}
ModelSpec TiedLlamaSpec() {
  return TwoLayerSpec(
      R"("architectures": ["LlamaForCausalLM"], "tie_word_embeddings": true)");
}

using ShapeMap = std::map<std::string, std::vector<int64_t>>;

ShapeMap ShapesFor(const ModelSpec& spec) {
  ShapeMap shapes;
  for (const ExpectedTensor& t : ExpectedHfTensors(spec)) {
    shapes[t.name] = t.shape;
  }
  return shapes;
}

TensorShapeFn Lookup(const ShapeMap& m) {
  return [&m](const std::string& name) -> std::optional<std::vector<int64_t>> {
    auto it = m.find(name);
    if (it == m.end()) return std::nullopt;
    return it->second;
  };
}

std::vector<std::string> Names(const ShapeMap& m) {
  std::vector<std::string> names;
  for (const auto& [name, shape] : m) names.push_back(name);
  return names;
}

std::vector<std::string> LayerNames(int l, bool qkv_bias) {
  const std::string b = "blk." + std::to_string(l) + ".";
  std::vector<std::string> n = {b + "attn_norm.weight", b + "attn_q.weight"};
  if (qkv_bias) n.push_back(b + "attn_q.bias");
  n.push_back(b + "attn_k.weight");
  if (qkv_bias) n.push_back(b + "attn_k.bias");
  n.push_back(b + "attn_v.weight");
  if (qkv_bias) n.push_back(b + "attn_v.bias");
  for (const char* s :
       {"attn_output.weight", "ffn_norm.weight", "ffn_gate.weight",
        "ffn_up.weight", "ffn_down.weight"}) {
    n.push_back(b + s);
  }
  return n;
}

std::vector<std::string> ExpectedGgufNames(bool qkv_bias, bool tied) {
  std::vector<std::string> n = {"token_embd.weight"};
  for (int l = 0; l < 2; ++l) {
    for (std::string& s : LayerNames(l, qkv_bias)) n.push_back(std::move(s));
  }
  n.push_back("output_norm.weight");
  if (!tied) n.push_back("output.weight");
  return n;
}

std::vector<std::string> GgufNames(const std::vector<GgufTensorPlan>& plans) {
  std::vector<std::string> n;
  for (const GgufTensorPlan& p : plans) n.push_back(p.gguf_name);
  return n;
}

const GgufTensorPlan& Find(const std::vector<GgufTensorPlan>& plans,
                           const std::string& gguf_name) {
  for (const GgufTensorPlan& p : plans) {
    if (p.gguf_name == gguf_name) return p;
  }
  ADD_FAILURE() << "no " << gguf_name;
  static const GgufTensorPlan kEmpty;
  return kEmpty;
}

TEST(PlanGgufTensorsTest, LlamaNamesOrderAndFlags) {
  const ModelSpec spec = LlamaSpec();
  const ShapeMap shapes = ShapesFor(spec);
  absl::StatusOr<std::vector<GgufTensorPlan>> plans =
      PlanGgufTensors(spec, Names(shapes), Lookup(shapes));
  ASSERT_TRUE(plans.ok()) << plans.status();
  EXPECT_THAT(GgufNames(*plans), ElementsAreArray(ExpectedGgufNames(
                                     /*qkv_bias=*/false, /*tied=*/false)));

  const GgufTensorPlan& q = Find(*plans, "blk.1.attn_q.weight");
  EXPECT_EQ(q.hf_name, "model.layers.1.self_attn.q_proj.weight");
  EXPECT_EQ(q.permutation, RowPermutation::kRopeQ);
  EXPECT_EQ(RopePermutationHeads(spec, q.permutation), 2);
  EXPECT_FALSE(q.keep_f32);
  EXPECT_EQ(q.layer, 1);
  EXPECT_THAT(q.hf_shape, ElementsAre(16, 16));

  const GgufTensorPlan& k = Find(*plans, "blk.0.attn_k.weight");
  EXPECT_EQ(k.permutation, RowPermutation::kRopeK);
  EXPECT_EQ(RopePermutationHeads(spec, k.permutation), 1);
  EXPECT_THAT(k.hf_shape, ElementsAre(8, 16));

  EXPECT_EQ(Find(*plans, "blk.0.attn_v.weight").permutation,
            RowPermutation::kNone);
  EXPECT_EQ(Find(*plans, "blk.0.attn_output.weight").hf_name,
            "model.layers.0.self_attn.o_proj.weight");
  EXPECT_EQ(Find(*plans, "blk.0.ffn_down.weight").hf_name,
            "model.layers.0.mlp.down_proj.weight");
  EXPECT_THAT(Find(*plans, "blk.0.ffn_down.weight").hf_shape,
              ElementsAre(16, 32));
  EXPECT_EQ(Find(*plans, "blk.1.attn_norm.weight").hf_name,
            "model.layers.1.input_layernorm.weight");
  EXPECT_EQ(Find(*plans, "blk.1.ffn_norm.weight").hf_name,
            "model.layers.1.post_attention_layernorm.weight");
  EXPECT_EQ(Find(*plans, "output.weight").hf_name, "lm_head.weight");
  EXPECT_EQ(Find(*plans, "output.weight").layer, -1);
  EXPECT_EQ(Find(*plans, "output_norm.weight").hf_name, "model.norm.weight");
  EXPECT_EQ(Find(*plans, "token_embd.weight").hf_name,
            "model.embed_tokens.weight");

  // Exactly the norms stay F32.
  for (const GgufTensorPlan& p : *plans) {
    const bool is_norm = p.gguf_name.find("norm") != std::string::npos;
    EXPECT_EQ(p.keep_f32, is_norm) << p.gguf_name;
  }
}

TEST(PlanGgufTensorsTest, Qwen2BiasesAndNoPermutation) {
  const ModelSpec spec = QwenSpec();
  const ShapeMap shapes = ShapesFor(spec);
  absl::StatusOr<std::vector<GgufTensorPlan>> plans =
      PlanGgufTensors(spec, Names(shapes), Lookup(shapes));
  ASSERT_TRUE(plans.ok()) << plans.status();
  EXPECT_THAT(GgufNames(*plans), ElementsAreArray(ExpectedGgufNames(
                                     /*qkv_bias=*/true, /*tied=*/false)));
  for (const GgufTensorPlan& p : *plans) {
    EXPECT_EQ(p.permutation, RowPermutation::kNone) << p.gguf_name;
    const bool f32 = p.gguf_name.find("norm") != std::string::npos ||
                     p.gguf_name.find(".bias") != std::string::npos;
    EXPECT_EQ(p.keep_f32, f32) << p.gguf_name;
  }
  const GgufTensorPlan& kb = Find(*plans, "blk.1.attn_k.bias");
  EXPECT_EQ(kb.hf_name, "model.layers.1.self_attn.k_proj.bias");
  EXPECT_THAT(kb.hf_shape, ElementsAre(8));
}

TEST(PlanGgufTensorsTest, LlamaAttentionBiasIsPermutedLikeItsRows) {
  const ModelSpec spec = TwoLayerSpec(
      R"("architectures": ["LlamaForCausalLM"], "attention_bias": true)");
  const ShapeMap shapes = ShapesFor(spec);
  absl::StatusOr<std::vector<GgufTensorPlan>> plans =
      PlanGgufTensors(spec, Names(shapes), Lookup(shapes));
  ASSERT_TRUE(plans.ok()) << plans.status();
  EXPECT_EQ(Find(*plans, "blk.0.attn_q.bias").permutation,
            RowPermutation::kRopeQ);
  EXPECT_EQ(Find(*plans, "blk.0.attn_k.bias").permutation,
            RowPermutation::kRopeK);
  EXPECT_EQ(Find(*plans, "blk.0.attn_v.bias").permutation,
            RowPermutation::kNone);
  EXPECT_TRUE(Find(*plans, "blk.0.attn_output.bias").keep_f32);
}

TEST(PlanGgufTensorsTest, TiedHasNoOutputAndIgnoresStoredLmHead) {
  const ModelSpec spec = TiedLlamaSpec();
  ShapeMap shapes = ShapesFor(spec);
  absl::StatusOr<std::vector<GgufTensorPlan>> plans =
      PlanGgufTensors(spec, Names(shapes), Lookup(shapes));
  ASSERT_TRUE(plans.ok()) << plans.status();
  EXPECT_THAT(GgufNames(*plans), ElementsAreArray(ExpectedGgufNames(
                                     /*qkv_bias=*/false, /*tied=*/true)));
  // Some tied checkpoints still store a copy of the head: not an error.
  shapes["lm_head.weight"] = {40, 16};
  shapes["model.layers.0.self_attn.rotary_emb.inv_freq"] = {4};
  plans = PlanGgufTensors(spec, Names(shapes), Lookup(shapes));
  ASSERT_TRUE(plans.ok()) << plans.status();
  EXPECT_EQ(plans->size(), ExpectedGgufNames(false, true).size());
}

TEST(PlanGgufTensorsTest, UnknownTensorIsAnError) {
  const ModelSpec spec = LlamaSpec();
  ShapeMap shapes = ShapesFor(spec);
  shapes["model.layers.0.mlp.gate_proj.bias"] = {32};
  absl::StatusOr<std::vector<GgufTensorPlan>> plans =
      PlanGgufTensors(spec, Names(shapes), Lookup(shapes));
  ASSERT_FALSE(plans.ok());
  EXPECT_EQ(plans.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(plans.status().message()),
              HasSubstr("checkpoint tensor model.layers.0.mlp.gate_proj.bias "
                        "is not used by LlamaForCausalLM"));
  // The overload without the name list cannot see it.
  EXPECT_TRUE(PlanGgufTensors(spec, Lookup(shapes)).ok());
  // A layer past num_hidden_layers is unknown too.
  shapes.erase("model.layers.0.mlp.gate_proj.bias");
  shapes["model.layers.2.input_layernorm.weight"] = {16};
  plans = PlanGgufTensors(spec, Names(shapes), Lookup(shapes));
  ASSERT_FALSE(plans.ok());
  EXPECT_THAT(std::string(plans.status().message()),
              HasSubstr("model.layers.2.input_layernorm.weight"));
}

TEST(PlanGgufTensorsTest, MissingTensorIsAnError) {
  const ModelSpec spec = QwenSpec();
  ShapeMap shapes = ShapesFor(spec);
  shapes.erase("model.layers.1.self_attn.q_proj.bias");
  absl::StatusOr<std::vector<GgufTensorPlan>> plans =
      PlanGgufTensors(spec, Names(shapes), Lookup(shapes));
  ASSERT_FALSE(plans.ok());
  EXPECT_EQ(plans.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(plans.status().message()),
              HasSubstr("no tensor model.layers.1.self_attn.q_proj.bias"));
}

TEST(PlanGgufTensorsTest, ShapeMismatchIsAnError) {
  const ModelSpec spec = LlamaSpec();
  ShapeMap shapes = ShapesFor(spec);
  shapes["model.layers.1.mlp.up_proj.weight"] = {16, 32};
  absl::StatusOr<std::vector<GgufTensorPlan>> plans =
      PlanGgufTensors(spec, Lookup(shapes));
  ASSERT_FALSE(plans.ok());
  EXPECT_EQ(plans.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(plans.status().message(),
            "model.layers.1.mlp.up_proj.weight has shape [16,32] but config "
            "intermediate_size=32 and hidden_size=16 implies [32,16]");
}

// ---- Row permutation ----

// Row r of the input holds r * 100 + c.
std::vector<float> RowMatrix(int64_t rows, int64_t cols) {
  std::vector<float> m(rows * cols);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) m[r * cols + c] = r * 100.0f + c;
  }
  return m;
}

// Which input row each output row came from.
std::vector<int64_t> SourceRows(const std::vector<float>& out, int64_t cols) {
  std::vector<int64_t> src;
  for (size_t r = 0; r < out.size() / cols; ++r) {
    const float v = out[r * cols];
    src.push_back(static_cast<int64_t>(v / 100.0f));
    for (int64_t c = 0; c < cols; ++c) {
      EXPECT_EQ(out[r * cols + c], src.back() * 100.0f + c) << "row " << r;
    }
  }
  return src;
}

TEST(PermuteRowsForRopeTest, TwoHeadsOfFour) {
  // [2 heads, 2, 2, cols] -> swap axes 1, 2: per head rows (0,2,1,3).
  const std::vector<float> in = RowMatrix(8, 3);
  std::vector<float> out(in.size(), -1.0f);
  ASSERT_TRUE(PermuteRowsForRope(in.data(), out.data(), 8, 3, 2).ok());
  EXPECT_THAT(SourceRows(out, 3), ElementsAre(0, 2, 1, 3, 4, 6, 5, 7));
}

TEST(PermuteRowsForRopeTest, OneHeadOfEight) {
  // Output row 2i+j <- input row j*4 + i: rotary pairs (i, i+4) interleave.
  const std::vector<float> in = RowMatrix(8, 2);
  std::vector<float> out(in.size(), -1.0f);
  ASSERT_TRUE(PermuteRowsForRope(in.data(), out.data(), 8, 2, 1).ok());
  EXPECT_THAT(SourceRows(out, 2), ElementsAre(0, 4, 1, 5, 2, 6, 3, 7));
}

TEST(PermuteRowsForRopeTest, GqaKeyHeads) {
  // 3 heads of 6: per head (0,3,1,4,2,5) + 6h.
  const std::vector<float> in = RowMatrix(18, 1);
  std::vector<float> out(in.size(), -1.0f);
  ASSERT_TRUE(PermuteRowsForRope(in.data(), out.data(), 18, 1, 3).ok());
  EXPECT_THAT(SourceRows(out, 1), ElementsAre(0, 3, 1, 4, 2, 5, 6, 9, 7, 10, 8,
                                              11, 12, 15, 13, 16, 14, 17));
}

TEST(PermuteRowsForRopeTest, IsABijectionAndNotIdentity) {
  const int64_t rows = 4 * 64;
  const std::vector<float> in = RowMatrix(rows, 5);
  std::vector<float> out(in.size(), -1.0f);
  ASSERT_TRUE(PermuteRowsForRope(in.data(), out.data(), rows, 5, 4).ok());
  std::vector<int64_t> src = SourceRows(out, 5);
  std::vector<int64_t> iota(rows);
  std::iota(iota.begin(), iota.end(), 0);
  EXPECT_NE(src, iota);
  // Every head's rows stay inside that head.
  for (int64_t r = 0; r < rows; ++r) EXPECT_EQ(src[r] / 64, r / 64);
  std::sort(src.begin(), src.end());
  EXPECT_EQ(src, iota);
}

TEST(PermuteRowsForRopeTest, ByteGenericMatchesFloatForm) {
  // bf16-sized elements (2 bytes), a bias vector (one element per row).
  const int64_t rows = 16;
  std::vector<uint16_t> in(rows);
  for (int64_t r = 0; r < rows; ++r) in[r] = static_cast<uint16_t>(0x100 + r);
  std::vector<uint16_t> out(rows, 0);
  ASSERT_TRUE(PermuteRowsForRope(in.data(), out.data(), rows,
                                 /*row_bytes=*/2, /*n_head=*/2)
                  .ok());
  const std::vector<float> fin = RowMatrix(rows, 1);
  std::vector<float> fout(rows);
  ASSERT_TRUE(PermuteRowsForRope(fin.data(), fout.data(), rows, 1, 2).ok());
  const std::vector<int64_t> src = SourceRows(fout, 1);
  for (int64_t r = 0; r < rows; ++r) {
    EXPECT_EQ(out[r], 0x100 + src[r]) << r;
  }
}

TEST(PermuteRowsForRopeTest, RejectsBadShapes) {
  std::vector<float> in(12 * 2), out(12 * 2);
  absl::Status s = PermuteRowsForRope(in.data(), out.data(), 12, 2, 4);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()),
              HasSubstr("12 rows of 8 bytes do not split into 4 heads"));
  EXPECT_EQ(PermuteRowsForRope(in.data(), out.data(), 12, 2, 0).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(PermuteRowsForRope(in.data(), out.data(), 12, 0, 2).code(),
            absl::StatusCode::kInvalidArgument);
  s = PermuteRowsForRope(in.data(), in.data() + 2, 12, 2, 2);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("overlap"));
}

}  // namespace
}  // namespace quant
