#include "format/model_config.h"

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/file.h"
#include "common/test_data.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace quant {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

constexpr char kLlama2_7B[] = R"({
  "architectures": ["LlamaForCausalLM"], "bos_token_id": 1, "eos_token_id": 2,
  "hidden_act": "silu", "hidden_size": 4096, "initializer_range": 0.02,
  "intermediate_size": 11008, "max_position_embeddings": 4096,
  "model_type": "llama", "num_attention_heads": 32, "num_hidden_layers": 32,
  "num_key_value_heads": 32, "pretraining_tp": 1, "rms_norm_eps": 1e-05,
  "rope_scaling": null, "tie_word_embeddings": false, "torch_dtype": "float16",
  "transformers_version": "4.31.0.dev0", "use_cache": true, "vocab_size": 32000
})";

constexpr char kLlama3_8B[] = R"({
  "architectures": ["LlamaForCausalLM"], "attention_bias": false,
  "attention_dropout": 0.0, "bos_token_id": 128000, "eos_token_id": 128001,
  "hidden_act": "silu", "hidden_size": 4096, "initializer_range": 0.02,
  "intermediate_size": 14336, "max_position_embeddings": 8192,
  "model_type": "llama", "num_attention_heads": 32, "num_hidden_layers": 32,
  "num_key_value_heads": 8, "pretraining_tp": 1, "rms_norm_eps": 1e-05,
  "rope_scaling": null, "rope_theta": 500000.0, "tie_word_embeddings": false,
  "torch_dtype": "bfloat16", "transformers_version": "4.40.0.dev0",
  "use_cache": true, "vocab_size": 128256
})";

constexpr char kLlama31_8B[] = R"({
  "architectures": ["LlamaForCausalLM"], "attention_bias": false,
  "attention_dropout": 0.0, "bos_token_id": 128000,
  "eos_token_id": [128001, 128008, 128009], "hidden_act": "silu",
  "hidden_size": 4096, "initializer_range": 0.02, "intermediate_size": 14336,
  "max_position_embeddings": 131072, "mlp_bias": false, "model_type": "llama",
  "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8,
  "pretraining_tp": 1, "rms_norm_eps": 1e-05,
  "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0,
    "high_freq_factor": 4.0, "original_max_position_embeddings": 8192,
    "rope_type": "llama3"},
  "rope_theta": 500000.0, "tie_word_embeddings": false,
  "torch_dtype": "bfloat16", "transformers_version": "4.43.0.dev0",
  "use_cache": true, "vocab_size": 128256
})";

constexpr char kMistral7B[] = R"({
  "architectures": ["MistralForCausalLM"], "attention_dropout": 0.0,
  "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu",
  "hidden_size": 4096, "initializer_range": 0.02, "intermediate_size": 14336,
  "max_position_embeddings": 32768, "model_type": "mistral",
  "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8,
  "rms_norm_eps": 1e-05, "rope_theta": 1000000.0, "sliding_window": null,
  "tie_word_embeddings": false, "torch_dtype": "bfloat16",
  "transformers_version": "4.36.0", "use_cache": true, "vocab_size": 32000
})";

constexpr char kQwen2_7B[] = R"({
  "architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0,
  "bos_token_id": 151643, "eos_token_id": 151643, "hidden_act": "silu",
  "hidden_size": 3584, "initializer_range": 0.02, "intermediate_size": 18944,
  "max_position_embeddings": 131072, "max_window_layers": 28,
  "model_type": "qwen2", "num_attention_heads": 28, "num_hidden_layers": 28,
  "num_key_value_heads": 4, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0,
  "sliding_window": 131072, "tie_word_embeddings": false,
  "torch_dtype": "bfloat16", "transformers_version": "4.37.2",
  "use_cache": true, "use_sliding_window": false, "vocab_size": 152064
})";

constexpr char kQwen2_05B[] = R"({
  "architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0,
  "bos_token_id": 151643, "eos_token_id": 151643, "hidden_act": "silu",
  "hidden_size": 896, "initializer_range": 0.02, "intermediate_size": 4864,
  "max_position_embeddings": 131072, "max_window_layers": 24,
  "model_type": "qwen2", "num_attention_heads": 14, "num_hidden_layers": 24,
  "num_key_value_heads": 2, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0,
  "sliding_window": 131072, "tie_word_embeddings": true,
  "torch_dtype": "bfloat16", "transformers_version": "4.40.1",
  "use_cache": true, "use_sliding_window": false, "vocab_size": 151936
})";

// Mistral-Nemo style: head_dim (128) is not hidden_size / heads (160).
constexpr char kMistralNemo[] = R"({
  "architectures": ["MistralForCausalLM"], "bos_token_id": 1,
  "eos_token_id": 2, "head_dim": 128, "hidden_size": 5120,
  "intermediate_size": 14336, "max_position_embeddings": 1024000,
  "model_type": "mistral", "num_attention_heads": 32, "num_hidden_layers": 40,
  "num_key_value_heads": 8, "rms_norm_eps": 1e-05, "rope_theta": 1000000.0,
  "sliding_window": null, "tie_word_embeddings": false,
  "torch_dtype": "bfloat16", "vocab_size": 131072
})";

// A small valid config for error tests, edited by string replacement.
constexpr char kSmall[] = R"({
  "architectures": ["LlamaForCausalLM"], "model_type": "llama",
  "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
  "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 100
})";

std::string Replace(std::string s, const std::string& from,
                    const std::string& to) {
  const size_t pos = s.find(from);
  EXPECT_NE(pos, std::string::npos) << from;
  if (pos != std::string::npos) s.replace(pos, from.size(), to);
  return s;
}

TEST(ModelConfigTest, RealLlama29mConfig) {
  const std::string dir = SharedDataDir();
  if (dir.empty()) GTEST_SKIP() << "shared data (../shared/data) is absent";
  absl::StatusOr<ModelSpec> spec = LoadModelConfig(dir + "/llama-29m-books");
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_EQ(spec->architecture, "LlamaForCausalLM");
  EXPECT_EQ(spec->model_type, "llama");
  EXPECT_EQ(spec->gguf_arch, "llama");
  EXPECT_EQ(spec->hidden_size, 512);
  EXPECT_EQ(spec->intermediate_size, 1536);
  EXPECT_EQ(spec->num_layers, 8);
  EXPECT_EQ(spec->num_heads, 8);
  EXPECT_EQ(spec->num_kv_heads, 4);
  EXPECT_EQ(spec->head_dim, 64);
  EXPECT_EQ(spec->vocab_size, 4096);
  EXPECT_EQ(spec->max_position_embeddings, 1024);
  EXPECT_DOUBLE_EQ(spec->rms_norm_eps, 1e-5);
  EXPECT_DOUBLE_EQ(spec->rope_theta, 10000.0);  // From rope_parameters.
  EXPECT_EQ(spec->rope_scaling.type, "");
  EXPECT_FALSE(spec->tie_word_embeddings);
  EXPECT_FALSE(spec->attention_bias);
  EXPECT_EQ(spec->torch_dtype, "bfloat16");  // From "dtype".
  EXPECT_EQ(spec->bos_token_id, 1);
  EXPECT_EQ(spec->eos_token_id, 2);
  EXPECT_THAT(spec->eos_token_ids, ElementsAre(2));
  EXPECT_FALSE(spec->pad_token_id.has_value());
  EXPECT_FALSE(spec->sliding_window.has_value());

  const std::vector<std::string> names = ExpectedHfTensorNames(*spec);
  EXPECT_EQ(names.size(), 2 + 8 * 9 + 1u);
  EXPECT_EQ(names.front(), "model.embed_tokens.weight");
  EXPECT_EQ(names.back(), "lm_head.weight");
}

TEST(ModelConfigTest, Llama2_7B) {
  absl::StatusOr<ModelSpec> spec = ParseModelConfig(kLlama2_7B);
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_EQ(spec->gguf_arch, "llama");
  EXPECT_EQ(spec->num_kv_heads, 32);
  EXPECT_EQ(spec->head_dim, 128);
  EXPECT_EQ(spec->intermediate_size, 11008);
  EXPECT_EQ(spec->vocab_size, 32000);
  EXPECT_DOUBLE_EQ(spec->rope_theta, 10000.0);  // Default.
  EXPECT_DOUBLE_EQ(spec->rms_norm_eps, 1e-5);
  EXPECT_EQ(spec->rope_scaling.type, "");
  EXPECT_EQ(spec->torch_dtype, "float16");
  EXPECT_EQ(spec->eos_token_id, 2);
}

TEST(ModelConfigTest, Llama3_8B) {
  absl::StatusOr<ModelSpec> spec = ParseModelConfig(kLlama3_8B);
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_EQ(spec->num_heads, 32);
  EXPECT_EQ(spec->num_kv_heads, 8);
  EXPECT_EQ(spec->head_dim, 128);
  EXPECT_EQ(spec->vocab_size, 128256);
  EXPECT_DOUBLE_EQ(spec->rope_theta, 500000.0);
  EXPECT_EQ(spec->bos_token_id, 128000);
  EXPECT_EQ(spec->eos_token_id, 128001);
}

TEST(ModelConfigTest, Llama31_8BRopeScalingAndEosList) {
  absl::StatusOr<ModelSpec> spec = ParseModelConfig(kLlama31_8B);
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_EQ(spec->rope_scaling.type, "llama3");
  EXPECT_DOUBLE_EQ(spec->rope_scaling.factor, 8.0);
  EXPECT_DOUBLE_EQ(spec->rope_scaling.low_freq_factor, 1.0);
  EXPECT_DOUBLE_EQ(spec->rope_scaling.high_freq_factor, 4.0);
  EXPECT_EQ(spec->rope_scaling.original_max_position_embeddings, 8192);
  EXPECT_DOUBLE_EQ(spec->rope_theta, 500000.0);
  EXPECT_EQ(spec->max_position_embeddings, 131072);
  EXPECT_EQ(spec->eos_token_id, 128001);
  EXPECT_THAT(spec->eos_token_ids, ElementsAre(128001, 128008, 128009));
}

TEST(ModelConfigTest, Mistral7B) {
  absl::StatusOr<ModelSpec> spec = ParseModelConfig(kMistral7B);
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_EQ(spec->architecture, "MistralForCausalLM");
  EXPECT_EQ(spec->model_type, "mistral");
  EXPECT_EQ(spec->gguf_arch, "llama");
  EXPECT_FALSE(spec->sliding_window.has_value());
  EXPECT_FALSE(spec->attention_bias);
  EXPECT_DOUBLE_EQ(spec->rope_theta, 1e6);

  // Mistral-7B-v0.1 had a 4096-token window.
  spec = ParseModelConfig(Replace(kMistral7B, "\"sliding_window\": null",
                                  "\"sliding_window\": 4096"));
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_EQ(spec->sliding_window, 4096);
}

TEST(ModelConfigTest, Qwen2_7B) {
  absl::StatusOr<ModelSpec> spec = ParseModelConfig(kQwen2_7B);
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_EQ(spec->model_type, "qwen2");
  EXPECT_EQ(spec->gguf_arch, "qwen2");
  EXPECT_TRUE(spec->attention_bias);
  EXPECT_FALSE(spec->tie_word_embeddings);
  EXPECT_EQ(spec->head_dim, 128);
  EXPECT_DOUBLE_EQ(spec->rms_norm_eps, 1e-6);
  // use_sliding_window is false: the sliding_window value is not in effect.
  EXPECT_FALSE(spec->sliding_window.has_value());

  const std::vector<std::string> names = ExpectedHfTensorNames(*spec);
  // Per layer: 2 norms + 4 attention weights + 3 biases + 3 MLP.
  EXPECT_EQ(names.size(), 1 + 28 * 12 + 2u);
  EXPECT_THAT(names,
              ::testing::Contains("model.layers.27.self_attn.v_proj.bias"));
  EXPECT_THAT(names, ::testing::Not(::testing::Contains(
                         "model.layers.0.self_attn.o_proj.bias")));
  EXPECT_EQ(names.back(), "lm_head.weight");
}

TEST(ModelConfigTest, Qwen2_05BTied) {
  absl::StatusOr<ModelSpec> spec = ParseModelConfig(kQwen2_05B);
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_TRUE(spec->tie_word_embeddings);
  EXPECT_EQ(spec->head_dim, 64);
  EXPECT_EQ(spec->num_kv_heads, 2);
  const std::vector<std::string> names = ExpectedHfTensorNames(*spec);
  EXPECT_EQ(names.back(), "model.norm.weight");
  EXPECT_THAT(names, ::testing::Not(::testing::Contains("lm_head.weight")));
}

TEST(ModelConfigTest, HeadDimGivenExplicitly) {
  absl::StatusOr<ModelSpec> spec = ParseModelConfig(kMistralNemo);
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_EQ(spec->head_dim, 128);  // Not 5120 / 32 = 160.
  std::map<std::string, std::vector<int64_t>> shapes;
  for (const ExpectedTensor& t : ExpectedHfTensors(*spec)) {
    shapes[t.name] = t.shape;
  }
  EXPECT_THAT(shapes["model.layers.0.self_attn.q_proj.weight"],
              ElementsAre(4096, 5120));
  EXPECT_THAT(shapes["model.layers.0.self_attn.k_proj.weight"],
              ElementsAre(1024, 5120));
  EXPECT_THAT(shapes["model.layers.0.self_attn.o_proj.weight"],
              ElementsAre(5120, 4096));
  EXPECT_THAT(shapes["model.layers.39.mlp.down_proj.weight"],
              ElementsAre(5120, 14336));
}

TEST(ModelConfigTest, LlamaAttentionBiasIncludesOutputBias) {
  absl::StatusOr<ModelSpec> spec = ParseModelConfig(
      Replace(kSmall, "\"model_type\": \"llama\",",
              "\"model_type\": \"llama\", \"attention_bias\": true,"));
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_TRUE(spec->attention_bias);
  const std::vector<std::string> names = ExpectedHfTensorNames(*spec);
  EXPECT_THAT(names,
              ::testing::Contains("model.layers.1.self_attn.o_proj.bias"));
  EXPECT_THAT(names,
              ::testing::Contains("model.layers.1.self_attn.k_proj.bias"));
}

TEST(ModelConfigTest, RopeParametersLlama3) {
  // transformers 5 layout: theta and scaling both in rope_parameters.
  absl::StatusOr<ModelSpec> spec = ParseModelConfig(
      Replace(kSmall, "\"vocab_size\": 100",
              R"("vocab_size": 100, "rope_parameters": {"rope_theta": 500000.0,
         "rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
         "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})"));
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_DOUBLE_EQ(spec->rope_theta, 500000.0);
  EXPECT_EQ(spec->rope_scaling.type, "llama3");
  EXPECT_DOUBLE_EQ(spec->rope_scaling.factor, 32.0);
  EXPECT_EQ(spec->rope_scaling.original_max_position_embeddings, 8192);
}

TEST(ModelConfigTest, LinearRopeScalingWithLegacyTypeKey) {
  absl::StatusOr<ModelSpec> spec = ParseModelConfig(
      Replace(kSmall, "\"vocab_size\": 100",
              R"("vocab_size": 100, "rope_scaling": {"type": "linear",
                 "factor": 4.0})"));
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_EQ(spec->rope_scaling.type, "linear");
  EXPECT_DOUBLE_EQ(spec->rope_scaling.factor, 4.0);
}

TEST(ModelConfigTest, DefaultsWhenOptionalFieldsAbsent) {
  absl::StatusOr<ModelSpec> spec =
      ParseModelConfig(Replace(kSmall, "\"num_key_value_heads\": 2,", ""));
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_EQ(spec->num_kv_heads, 4);  // = num_attention_heads.
  EXPECT_EQ(spec->head_dim, 16);     // 64 / 4.
  EXPECT_DOUBLE_EQ(spec->rms_norm_eps, 1e-6);
  EXPECT_DOUBLE_EQ(spec->rope_theta, 10000.0);
  EXPECT_FALSE(spec->tie_word_embeddings);
  EXPECT_FALSE(spec->bos_token_id.has_value());
  EXPECT_TRUE(spec->eos_token_ids.empty());
  EXPECT_EQ(spec->torch_dtype, "");
}

// ---- Errors ----

void ExpectError(const std::string& json, absl::StatusCode code,
                 const std::string& substring) {
  absl::StatusOr<ModelSpec> spec = ParseModelConfig(json);
  ASSERT_FALSE(spec.ok()) << "expected an error containing: " << substring;
  EXPECT_EQ(spec.status().code(), code) << spec.status();
  EXPECT_THAT(std::string(spec.status().message()), HasSubstr(substring));
}

TEST(ModelConfigErrorTest, UnsupportedArchitecture) {
  ExpectError(Replace(kSmall, "LlamaForCausalLM", "GPT2LMHeadModel"),
              absl::StatusCode::kUnimplemented,
              "`architectures` is \"GPT2LMHeadModel\"");
}

TEST(ModelConfigErrorTest, ModelTypeMismatch) {
  ExpectError(
      Replace(kSmall, "\"model_type\": \"llama\"", "\"model_type\": \"qwen2\""),
      absl::StatusCode::kInvalidArgument,
      "`model_type` \"qwen2\" does not match `architectures`");
}

TEST(ModelConfigErrorTest, MissingRequiredField) {
  ExpectError(Replace(kSmall, "\"intermediate_size\": 128,", ""),
              absl::StatusCode::kInvalidArgument,
              "missing required field `intermediate_size`");
  ExpectError(Replace(kSmall, "\"vocab_size\": 100", "\"foo\": 1"),
              absl::StatusCode::kInvalidArgument,
              "missing required field `vocab_size`");
}

TEST(ModelConfigErrorTest, WrongType) {
  ExpectError(Replace(kSmall, "\"hidden_size\": 64", "\"hidden_size\": \"64\""),
              absl::StatusCode::kInvalidArgument,
              "`hidden_size` must be an integer, got string \"64\"");
  ExpectError(Replace(kSmall, "\"vocab_size\": 100",
                      "\"vocab_size\": 100, \"rms_norm_eps\": [1]"),
              absl::StatusCode::kInvalidArgument,
              "`rms_norm_eps` must be a number");
  ExpectError(Replace(kSmall, "\"vocab_size\": 100",
                      "\"vocab_size\": 100, \"tie_word_embeddings\": 1"),
              absl::StatusCode::kInvalidArgument,
              "`tie_word_embeddings` must be a boolean");
  ExpectError(Replace(kSmall, "\"vocab_size\": 100",
                      "\"vocab_size\": 100, \"rope_scaling\": {\"rope_type\": "
                      "\"linear\", \"factor\": \"x\"}"),
              absl::StatusCode::kInvalidArgument,
              "`rope_scaling.factor` must be a number");
  ExpectError(Replace(kSmall, "[\"LlamaForCausalLM\"]", "\"LlamaForCausalLM\""),
              absl::StatusCode::kInvalidArgument,
              "`architectures` must be a non-empty list of strings");
}

TEST(ModelConfigErrorTest, OutOfRange) {
  ExpectError(Replace(kSmall, "\"hidden_size\": 64", "\"hidden_size\": 0"),
              absl::StatusCode::kInvalidArgument,
              "`hidden_size` must be in [1, 16777216], got 0");
  ExpectError(Replace(kSmall, "\"vocab_size\": 100", "\"vocab_size\": 1e300"),
              absl::StatusCode::kInvalidArgument,
              "`vocab_size` must be an integer");
}

TEST(ModelConfigErrorTest, KvHeadsMustDivideHeads) {
  ExpectError(Replace(kSmall, "\"num_key_value_heads\": 2",
                      "\"num_key_value_heads\": 3"),
              absl::StatusCode::kInvalidArgument,
              "num_key_value_heads=3 does not divide num_attention_heads=4");
}

TEST(ModelConfigErrorTest, HiddenNotDivisibleByHeads) {
  ExpectError(Replace(kSmall, "\"hidden_size\": 64", "\"hidden_size\": 66"),
              absl::StatusCode::kInvalidArgument,
              "hidden_size=66 is not divisible by num_attention_heads=4");
}

TEST(ModelConfigErrorTest, UnsupportedRopeScaling) {
  ExpectError(
      Replace(kSmall, "\"vocab_size\": 100",
              R"("vocab_size": 100, "rope_scaling": {"rope_type": "yarn",
                         "factor": 4.0, "original_max_position_embeddings": 32768})"),
      absl::StatusCode::kUnimplemented,
      "rope_scaling.rope_type \"yarn\" is not supported");
  ExpectError(Replace(kSmall, "\"vocab_size\": 100",
                      R"("vocab_size": 100, "rope_parameters": {
                         "rope_type": "dynamic", "factor": 2.0})"),
              absl::StatusCode::kUnimplemented,
              "rope_parameters.rope_type \"dynamic\" is not supported");
  ExpectError(
      Replace(kSmall, "\"vocab_size\": 100",
              R"("vocab_size": 100, "rope_scaling": {"rope_type": "llama3",
                         "factor": 8.0})"),
      absl::StatusCode::kInvalidArgument,
      "rope_scaling.original_max_position_embeddings");
}

TEST(ModelConfigErrorTest, MlpBiasUnsupported) {
  ExpectError(Replace(kSmall, "\"vocab_size\": 100",
                      "\"vocab_size\": 100, \"mlp_bias\": true"),
              absl::StatusCode::kUnimplemented, "`mlp_bias`");
}

TEST(ModelConfigErrorTest, NotJson) {
  ExpectError("{\"hidden_size\": ", absl::StatusCode::kInvalidArgument,
              "config.json is not well-formed JSON: parse error");
  ExpectError("[1, 2]", absl::StatusCode::kInvalidArgument,
              "config.json must hold a JSON object, got array [1,2]");
  ExpectError("{\"a\": \"\xff\"}", absl::StatusCode::kInvalidArgument,
              "config.json is not valid UTF-8 at byte 7");
}

TEST(ModelConfigErrorTest, RejectsDuplicateKeys) {
  // nlohmann alone would silently keep the last value.
  ExpectError(Replace(kSmall, "\"hidden_size\": 64",
                      "\"hidden_size\": 64, \"hidden_size\": 128"),
              absl::StatusCode::kInvalidArgument,
              "config.json has duplicate key 'hidden_size'");
}

TEST(ModelConfigErrorTest, RejectsDeepNestingWithoutCrashing) {
  // Once a stack overflow when the wrong-typed value was described.
  const std::string deep = std::string(100000, '[') + std::string(100000, ']');
  ExpectError(
      Replace(kSmall, "\"hidden_size\": 64", "\"hidden_size\": " + deep),
      absl::StatusCode::kInvalidArgument,
      "config.json nests deeper than 64 levels");
  // Within the limit, a huge wrong-typed value is described briefly.
  std::string wide = "[";
  for (int i = 0; i < 100000; ++i) absl::StrAppend(&wide, i ? "," : "", i);
  wide += "]";
  const absl::StatusOr<ModelSpec> spec = ParseModelConfig(
      Replace(kSmall, "\"hidden_size\": 64", "\"hidden_size\": " + wide));
  ASSERT_FALSE(spec.ok());
  EXPECT_THAT(std::string(spec.status().message()),
              HasSubstr("`hidden_size` must be an integer, got array of "
                        "100000 elements [0,1,2,"));
  EXPECT_LT(spec.status().message().size(), 200u);
}

TEST(ModelConfigErrorTest, LoadMissingFile) {
  const std::string dir = MakeTestTempDir("model_config_missing");
  absl::StatusOr<ModelSpec> spec = LoadModelConfig(dir);
  ASSERT_FALSE(spec.ok());
  EXPECT_EQ(spec.status().code(), absl::StatusCode::kNotFound) << spec.status();
}

TEST(ModelConfigErrorTest, LoadPrefixesPath) {
  const std::string dir = MakeTestTempDir("model_config_bad");
  ASSERT_TRUE(WriteFileAtomically(dir + "/config.json",
                                  Replace(kSmall, "\"hidden_size\": 64,", ""))
                  .ok());
  absl::StatusOr<ModelSpec> spec = LoadModelConfig(dir);
  ASSERT_FALSE(spec.ok());
  EXPECT_EQ(spec.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(spec.status().message()),
              HasSubstr(dir + "/config.json: missing required field "
                              "`hidden_size`"));
}

// ---- Tensor shapes ----

std::map<std::string, std::vector<int64_t>> ShapesFor(const ModelSpec& spec) {
  std::map<std::string, std::vector<int64_t>> shapes;
  for (const ExpectedTensor& t : ExpectedHfTensors(spec)) {
    shapes[t.name] = t.shape;
  }
  return shapes;
}

TensorShapeFn Lookup(const std::map<std::string, std::vector<int64_t>>& m) {
  return [&m](const std::string& name) -> std::optional<std::vector<int64_t>> {
    auto it = m.find(name);
    if (it == m.end()) return std::nullopt;
    return it->second;
  };
}

ModelSpec SmallSpec() {
  absl::StatusOr<ModelSpec> spec =
      ParseModelConfig(Replace(kSmall, "\"hidden_size\": 64",
                               "\"hidden_size\": 512, "
                               "\"head_dim\": 64"));
  EXPECT_TRUE(spec.ok()) << spec.status();
  return *spec;
}

TEST(ValidateTensorShapesTest, AcceptsMatchingShapes) {
  const ModelSpec spec = SmallSpec();
  const auto shapes = ShapesFor(spec);
  EXPECT_EQ(shapes.at("model.layers.0.self_attn.k_proj.weight"),
            (std::vector<int64_t>{128, 512}));
  EXPECT_TRUE(ValidateTensorShapes(spec, Lookup(shapes)).ok());
}

TEST(ValidateTensorShapesTest, ShapeMismatchNamesConfigFields) {
  ModelSpec spec = SmallSpec();
  spec.num_kv_heads = 8;  // The checkpoint has 2 kv heads of 64.
  spec.num_heads = 8;
  auto shapes = ShapesFor(SmallSpec());
  shapes["model.layers.0.self_attn.q_proj.weight"] = {512, 512};
  shapes["model.layers.0.self_attn.o_proj.weight"] = {512, 512};
  shapes["model.layers.1.self_attn.q_proj.weight"] = {512, 512};
  shapes["model.layers.1.self_attn.o_proj.weight"] = {512, 512};
  const absl::Status status = ValidateTensorShapes(spec, Lookup(shapes));
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(status.message(),
            "model.layers.0.self_attn.k_proj.weight has shape [128,512] but "
            "config num_key_value_heads=8 x head_dim=64 implies [512,512]");
}

TEST(ValidateTensorShapesTest, VocabMismatch) {
  const ModelSpec spec = SmallSpec();
  auto shapes = ShapesFor(spec);
  shapes["model.embed_tokens.weight"] = {128, 512};
  const absl::Status status = ValidateTensorShapes(spec, Lookup(shapes));
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(status.message(),
            "model.embed_tokens.weight has shape [128,512] but config "
            "vocab_size=100 implies [100,512]");
}

TEST(ValidateTensorShapesTest, RankMismatch) {
  const ModelSpec spec = SmallSpec();
  auto shapes = ShapesFor(spec);
  shapes["model.norm.weight"] = {1, 512};
  const absl::Status status = ValidateTensorShapes(spec, Lookup(shapes));
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(status.message(),
            "model.norm.weight has shape [1,512] but config hidden_size=512 "
            "implies [512]");
}

TEST(ValidateTensorShapesTest, MissingTensor) {
  const ModelSpec spec = SmallSpec();
  auto shapes = ShapesFor(spec);
  shapes.erase("model.layers.1.mlp.up_proj.weight");
  const absl::Status status = ValidateTensorShapes(spec, Lookup(shapes));
  EXPECT_EQ(status.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(status.message()),
              HasSubstr("no tensor model.layers.1.mlp.up_proj.weight"));
}

TEST(ValidateTensorShapesTest, MissingLmHeadNotTied) {
  const ModelSpec spec = SmallSpec();
  auto shapes = ShapesFor(spec);
  shapes.erase("lm_head.weight");
  const absl::Status status = ValidateTensorShapes(spec, Lookup(shapes));
  EXPECT_EQ(status.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(status.message()),
              HasSubstr("lm_head.weight and config tie_word_embeddings is "
                        "false"));
  // The same checkpoint is fine when the config says the head is tied.
  ModelSpec tied = spec;
  tied.tie_word_embeddings = true;
  EXPECT_TRUE(ValidateTensorShapes(tied, Lookup(shapes)).ok());
}

}  // namespace
}  // namespace quant
