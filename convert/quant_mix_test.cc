#include "convert/quant_mix.h"

#include <map>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace quant {
namespace {

using ::testing::HasSubstr;
using T = GgmlType;

GgufTensorPlan Matrix(const std::string& name, int layer, int64_t rows,
                      int64_t columns) {
  GgufTensorPlan plan;
  plan.gguf_name = name;
  plan.layer = layer;
  plan.hf_shape = {rows, columns};
  return plan;
}

// The tensors of a llama model shaped like ../shared/data/llama-29m-books
// (8 layers, hidden 512, 8 heads of which 4 key/value, FFN 1536).
std::vector<GgufTensorPlan> LlamaTensors(int layers, int64_t hidden,
                                         int64_t ffn, bool tied) {
  std::vector<GgufTensorPlan> tensors = {
      Matrix("token_embd.weight", -1, 4096, hidden)};
  for (int i = 0; i < layers; ++i) {
    const std::string p = "blk." + std::to_string(i) + ".";
    GgufTensorPlan norm;
    norm.gguf_name = p + "attn_norm.weight";
    norm.layer = i;
    norm.keep_f32 = true;
    norm.hf_shape = {hidden};
    tensors.push_back(norm);
    tensors.push_back(Matrix(p + "attn_q.weight", i, hidden, hidden));
    tensors.push_back(Matrix(p + "attn_k.weight", i, hidden / 2, hidden));
    tensors.push_back(Matrix(p + "attn_v.weight", i, hidden / 2, hidden));
    tensors.push_back(Matrix(p + "attn_output.weight", i, hidden, hidden));
    tensors.push_back(Matrix(p + "ffn_gate.weight", i, ffn, hidden));
    tensors.push_back(Matrix(p + "ffn_up.weight", i, ffn, hidden));
    tensors.push_back(Matrix(p + "ffn_down.weight", i, hidden, ffn));
  }
  if (!tied) tensors.push_back(Matrix("output.weight", -1, 4096, hidden));
  return tensors;
}

std::map<std::string, T> Plan(const std::string& mix_name,
                              const MixModelInfo& model,
                              const std::vector<GgufTensorPlan>& tensors) {
  const absl::StatusOr<QuantMix> mix = ParseQuantMix(mix_name);
  EXPECT_TRUE(mix.ok()) << mix.status();
  const std::vector<T> types = PlanMixTypes(*mix, model, tensors);
  std::map<std::string, T> by_name;
  for (size_t i = 0; i < tensors.size(); ++i) {
    by_name[tensors[i].gguf_name] = types[i];
  }
  return by_name;
}

const MixModelInfo kSmallLlama = {"llama", 8, 8, 4, false};

TEST(QuantMixTest, ParsesLlamaCppNames) {
  EXPECT_EQ(ParseQuantMix("q4_k_m")->name, "Q4_K_M");
  EXPECT_EQ(ParseQuantMix("Q4_K_M")->file_type, 15u);
  EXPECT_EQ(ParseQuantMix("Q3_K_S")->file_type, 11u);
  EXPECT_EQ(ParseQuantMix("Q2_K")->file_type, 10u);
  EXPECT_EQ(ParseQuantMix("Q6_K")->file_type, 18u);
  EXPECT_EQ(ParseQuantMix("Q5_1")->file_type, 9u);
  EXPECT_EQ(ParseQuantMix("bf16")->file_type, 32u);
  EXPECT_EQ(ParseQuantMix("Q5_K_S")->base, T::kQ5_K);
  EXPECT_EQ(AllQuantMixes().size(), 17u);
  const absl::Status status = ParseQuantMix("Q4_K_X").status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(status.message()),
              HasSubstr("unknown GGUF type \"Q4_K_X\"; choose one of: F32, "
                        "F16, BF16, Q8_0, Q6_K"));
}

// Layers 0, 3, 6 and 7 of 8 "use more bits": the first and last eighth and
// every third layer between.
TEST(QuantMixTest, Q4_K_MGivesSomeLayersQ6_K) {
  const auto types =
      Plan("Q4_K_M", kSmallLlama, LlamaTensors(8, 512, 1536, false));
  for (int i = 0; i < 8; ++i) {
    const std::string p = "blk." + std::to_string(i) + ".";
    const bool more = i == 0 || i == 3 || i == 6 || i == 7;
    EXPECT_EQ(types.at(p + "attn_v.weight"), more ? T::kQ6_K : T::kQ4_K) << i;
    EXPECT_EQ(types.at(p + "ffn_down.weight"), more ? T::kQ6_K : T::kQ4_K) << i;
    EXPECT_EQ(types.at(p + "attn_q.weight"), T::kQ4_K);
    EXPECT_EQ(types.at(p + "ffn_up.weight"), T::kQ4_K);
    EXPECT_EQ(types.at(p + "attn_norm.weight"), T::kF32);
  }
  EXPECT_EQ(types.at("output.weight"), T::kQ6_K);
  EXPECT_EQ(types.at("token_embd.weight"), T::kQ4_K);
}

TEST(QuantMixTest, LowBitMixes) {
  const auto tensors = LlamaTensors(8, 512, 1536, false);
  auto q2 = Plan("Q2_K", kSmallLlama, tensors);
  EXPECT_EQ(q2.at("blk.5.attn_v.weight"), T::kQ3_K);  // GQA 2 (< 4).
  EXPECT_EQ(q2.at("blk.5.ffn_down.weight"), T::kQ3_K);
  EXPECT_EQ(q2.at("blk.5.attn_output.weight"), T::kQ3_K);
  EXPECT_EQ(q2.at("blk.5.ffn_gate.weight"), T::kQ2_K);
  EXPECT_EQ(q2.at("output.weight"), T::kQ6_K);
  MixModelInfo gqa8 = kSmallLlama;
  gqa8.num_kv_heads = 1;
  EXPECT_EQ(Plan("Q2_K", gqa8, tensors).at("blk.5.attn_v.weight"), T::kQ4_K);

  auto q3m = Plan("Q3_K_M", kSmallLlama, tensors);
  EXPECT_EQ(q3m.at("blk.1.attn_v.weight"), T::kQ5_K);
  EXPECT_EQ(q3m.at("blk.2.attn_v.weight"), T::kQ4_K);
  EXPECT_EQ(q3m.at("blk.0.ffn_down.weight"), T::kQ4_K);  // 8 / 16 = 0.
  EXPECT_EQ(q3m.at("blk.0.attn_output.weight"), T::kQ4_K);
  EXPECT_EQ(q3m.at("blk.0.attn_k.weight"), T::kQ3_K);
  auto q3l = Plan("Q3_K_L", kSmallLlama, tensors);
  EXPECT_EQ(q3l.at("blk.4.attn_v.weight"), T::kQ5_K);
  EXPECT_EQ(q3l.at("blk.4.ffn_down.weight"), T::kQ5_K);
  EXPECT_EQ(q3l.at("blk.4.attn_output.weight"), T::kQ5_K);
  auto q3s = Plan("Q3_K_S", kSmallLlama, tensors);
  EXPECT_EQ(q3s.at("blk.0.attn_v.weight"), T::kQ3_K);
  EXPECT_EQ(q3s.at("output.weight"), T::kQ6_K);

  auto q4s = Plan("Q4_K_S", kSmallLlama, tensors);
  EXPECT_EQ(q4s.at("blk.3.attn_v.weight"), T::kQ5_K);
  EXPECT_EQ(q4s.at("blk.4.attn_v.weight"), T::kQ4_K);
  EXPECT_EQ(q4s.at("blk.0.ffn_down.weight"), T::kQ5_K);  // 8 / 8 = 1.
  EXPECT_EQ(q4s.at("blk.1.ffn_down.weight"), T::kQ4_K);
  auto q5s = Plan("Q5_K_S", kSmallLlama, tensors);
  EXPECT_EQ(q5s.at("blk.0.ffn_down.weight"), T::kQ5_K);
}

TEST(QuantMixTest, PlainAndLegacyMixes) {
  const auto tensors = LlamaTensors(8, 512, 1536, false);
  auto q8 = Plan("Q8_0", kSmallLlama, tensors);
  EXPECT_EQ(q8.at("output.weight"), T::kQ8_0);
  EXPECT_EQ(q8.at("blk.0.ffn_down.weight"), T::kQ8_0);
  auto q4 = Plan("Q4_0", kSmallLlama, tensors);
  EXPECT_EQ(q4.at("output.weight"), T::kQ6_K);
  EXPECT_EQ(q4.at("blk.0.ffn_down.weight"), T::kQ4_0);
  MixModelInfo with_importance = kSmallLlama;
  with_importance.has_importance = true;
  EXPECT_EQ(Plan("Q4_0", with_importance, tensors).at("blk.0.ffn_down.weight"),
            T::kQ4_1);
  EXPECT_EQ(Plan("Q5_0", with_importance, tensors).at("blk.1.ffn_down.weight"),
            T::kQ5_0);
  auto f16 = Plan("F16", kSmallLlama, tensors);
  EXPECT_EQ(f16.at("output.weight"), T::kF16);
  EXPECT_EQ(f16.at("blk.0.attn_norm.weight"), T::kF32);
}

TEST(QuantMixTest, TiedEmbeddingsGetTheOutputType) {
  const auto types =
      Plan("Q4_K_M", kSmallLlama, LlamaTensors(8, 512, 1536, true));
  EXPECT_EQ(types.at("token_embd.weight"), T::kQ6_K);
  EXPECT_EQ(types.count("output.weight"), 0u);
}

// Rows that 256 does not divide fall back to 32-blocks, or F16.
TEST(QuantMixTest, FallbackForRowsThatDoNotSplitIntoBlocks) {
  const auto tensors = LlamaTensors(8, 96, 200, false);  // 96 = 3 x 32.
  auto q4km = Plan("Q4_K_M", kSmallLlama, tensors);
  EXPECT_EQ(q4km.at("blk.1.attn_q.weight"), T::kQ5_0);   // Q4_K
  EXPECT_EQ(q4km.at("blk.0.attn_v.weight"), T::kQ8_0);   // Q6_K
  EXPECT_EQ(q4km.at("blk.1.ffn_down.weight"), T::kF16);  // 200 columns
  EXPECT_EQ(q4km.at("output.weight"), T::kQ8_0);
  EXPECT_EQ(Plan("Q5_K_S", kSmallLlama, tensors).at("blk.1.attn_q.weight"),
            T::kQ5_1);
  EXPECT_EQ(Plan("Q2_K", kSmallLlama, tensors).at("blk.1.attn_q.weight"),
            T::kQ4_0);
  EXPECT_EQ(Plan("Q3_K_S", kSmallLlama, tensors).at("blk.1.attn_q.weight"),
            T::kQ4_0);
}

// llama.cpp's 70B rule: 80 layers with grouped-query attention give attn_v
// at least Q5_K.
TEST(QuantMixTest, SeventyBillionRule) {
  const auto tensors = LlamaTensors(80, 512, 1536, false);
  const MixModelInfo llama70b = {"llama", 80, 64, 8, false};
  EXPECT_EQ(Plan("Q4_K_S", llama70b, tensors).at("blk.40.attn_v.weight"),
            T::kQ5_K);
  EXPECT_EQ(Plan("Q3_K_S", llama70b, tensors).at("blk.40.attn_v.weight"),
            T::kQ5_K);
  const MixModelInfo llama65b = {"llama", 80, 64, 64, false};
  EXPECT_EQ(Plan("Q4_K_S", llama65b, tensors).at("blk.40.attn_v.weight"),
            T::kQ4_K);
}

}  // namespace
}  // namespace quant
