#include "convert/tiny_llama.h"

#include <cmath>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/file.h"
#include "common/test_data.h"
#include "format/model_config.h"
#include "format/safetensors.h"
#include "format/tokenizer_import.h"
#include "gtest/gtest.h"

namespace quant {
namespace {

TEST(TinyLlamaTest, WritesAValidShardedCheckpoint) {
  const std::string dir = MakeTestTempDir("tiny") + "/model";
  TinyLlamaOptions options;
  options.num_layers = 3;
  ASSERT_TRUE(WriteTinyLlama(dir, options).ok());

  auto spec = LoadModelConfig(dir);
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_EQ(spec->num_layers, 3);
  EXPECT_EQ(spec->hidden_size, 256);
  EXPECT_EQ(spec->num_kv_heads, 2);
  EXPECT_EQ(spec->head_dim, 64);

  auto checkpoint = SafetensorsCheckpoint::Open(dir);
  ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();
  EXPECT_EQ((*checkpoint)->num_files(), 2u);
  EXPECT_EQ((*checkpoint)->TensorNames().size(), 2u + 9u * 3u + 1u);
  const absl::Status shapes = ValidateTensorShapes(
      *spec,
      [&](const std::string& name) -> std::optional<std::vector<int64_t>> {
        auto shape = (*checkpoint)->Shape(name);
        if (!shape.ok()) return std::nullopt;
        return *shape;
      });
  EXPECT_TRUE(shapes.ok()) << shapes;

  // Weights look like an initialised model: small, centred, not constant.
  auto q = (*checkpoint)->Get("model.layers.1.self_attn.q_proj.weight");
  ASSERT_TRUE(q.ok());
  auto values = q->ToFloatVector();
  ASSERT_TRUE(values.ok());
  double sum = 0, sum_sq = 0;
  for (float v : *values) {
    sum += v;
    sum_sq += double{v} * v;
  }
  const double mean = sum / values->size();
  const double stddev = std::sqrt(sum_sq / values->size() - mean * mean);
  EXPECT_NEAR(mean, 0.0, 1e-3);
  EXPECT_NEAR(stddev, 0.02, 1e-3);

  auto tokenizer = ImportTokenizer(dir, spec->vocab_size);
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  EXPECT_EQ(tokenizer->model, "gpt2");
  EXPECT_EQ(static_cast<int64_t>(tokenizer->tokens.size()), spec->vocab_size);
  // 256 byte tokens, the merges (up to 254: the text allows 253), 2 specials.
  EXPECT_EQ(tokenizer->merges.size(), 253u);
  EXPECT_EQ(spec->vocab_size, 256 + 253 + 2);
  EXPECT_EQ(tokenizer->bos_id, spec->bos_token_id);
  EXPECT_EQ(tokenizer->tokens[*tokenizer->bos_id], "<|begin_of_text|>");
}

TEST(TinyLlamaTest, SameSeedSameBytesOtherSeedOtherBytes) {
  const std::string base = MakeTestTempDir("tiny");
  TinyLlamaOptions options;
  options.num_shards = 1;
  ASSERT_TRUE(WriteTinyLlama(base + "/a", options).ok());
  ASSERT_TRUE(WriteTinyLlama(base + "/b", options).ok());
  options.seed = 2;
  ASSERT_TRUE(WriteTinyLlama(base + "/c", options).ok());
  const auto a = ReadFileToString(base + "/a/model.safetensors");
  const auto b = ReadFileToString(base + "/b/model.safetensors");
  const auto c = ReadFileToString(base + "/c/model.safetensors");
  ASSERT_TRUE(a.ok() && b.ok() && c.ok());
  EXPECT_EQ(*a, *b);
  EXPECT_NE(*a, *c);
}

// A vocabulary larger than the tokenizer and shards by size, as a real
// checkpoint has them: the files load, the tokenizer pads to the rows.
TEST(TinyLlamaTest, LargerVocabularyAndShardsBySize) {
  const std::string dir = MakeTestTempDir("tiny") + "/model";
  TinyLlamaOptions options;
  options.vocab_size = 1000;
  options.rope_theta = 500000.0;
  options.max_shard_bytes = 600'000;  // An embedding is 512 KB.
  ASSERT_TRUE(WriteTinyLlama(dir, options).ok());
  auto spec = LoadModelConfig(dir);
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_EQ(spec->vocab_size, 1000);
  EXPECT_EQ(spec->rope_theta, 500000.0);
  auto checkpoint = SafetensorsCheckpoint::Open(dir);
  ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();
  const absl::Status shapes = ValidateTensorShapes(
      *spec,
      [&](const std::string& name) -> std::optional<std::vector<int64_t>> {
        auto shape = (*checkpoint)->Shape(name);
        if (!shape.ok()) return std::nullopt;
        return *shape;
      });
  EXPECT_TRUE(shapes.ok()) << shapes;
  ASSERT_GT((*checkpoint)->num_files(), 2u);
  for (size_t i = 0; i < (*checkpoint)->num_files(); ++i) {
    const SafetensorsFile& file = (*checkpoint)->file(i);
    uint64_t bytes = 0;
    for (const TensorView& t : file.tensors()) bytes += t.nbytes;
    // At most the limit, unless one tensor alone is larger.
    EXPECT_TRUE(bytes <= 600'000 || file.tensors().size() == 1) << file.path();
    EXPECT_NE(
        file.path().find(absl::StrCat(
            "-of-", absl::Dec((*checkpoint)->num_files(), absl::kZeroPad5))),
        std::string::npos)
        << file.path();
  }
  auto tokenizer = ImportTokenizer(dir, spec->vocab_size);
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  EXPECT_EQ(tokenizer->tokens.size(), 1000u);
  options.vocab_size = 100;  // Fewer rows than tokens.
  EXPECT_EQ(WriteTinyLlama(dir + "2", options).code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(TinyLlamaTest, Llama3_70BShapesAreTheRealOnes) {
  const TinyLlamaOptions o = Llama3_70BShapes(3);
  EXPECT_EQ(o.num_layers, 3);
  EXPECT_EQ(o.hidden_size, 8192);
  EXPECT_EQ(o.intermediate_size, 28672);
  EXPECT_EQ(o.num_heads, 64);
  EXPECT_EQ(o.num_kv_heads, 8);
  EXPECT_EQ(o.vocab_size, 128256);
  EXPECT_EQ(o.rope_theta, 500000.0);
  EXPECT_EQ(o.max_shard_bytes, 5'000'000'000);
}

TEST(TinyLlamaTest, RefusesToOverwriteAModelAndBadSizes) {
  const std::string dir = MakeTestTempDir("tiny");
  TinyLlamaOptions options;
  ASSERT_TRUE(WriteTinyLlama(dir, options).ok());
  EXPECT_EQ(WriteTinyLlama(dir, options).code(),
            absl::StatusCode::kAlreadyExists);
  options.num_heads = 3;
  EXPECT_EQ(WriteTinyLlama(dir + "/x", options).code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace quant
