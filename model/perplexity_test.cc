#include "model/perplexity.h"

#include <string>

#include "common/file.h"
#include "common/test_data.h"
#include "format/model_config.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace quant {
namespace {

using ::testing::HasSubstr;

std::string SharedModel() {
  const std::string data = SharedDataDir();
  return data.empty() ? "" : data + "/llama-29m-books";
}

// The reference figure of ../shared/data (transformers, fp32) within 0.5%,
// and the reference token ids.
TEST(PerplexityTest, SharedModelMatchesTheReferenceOnHeldOutStories) {
  const std::string model = SharedModel();
  if (model.empty()) GTEST_SKIP() << "../shared/data is absent";
  absl::StatusOr<std::string> text =
      ReadFileToString(SharedDataDir() + "/text/heldout_stories.txt");
  ASSERT_TRUE(text.ok()) << text.status();
  absl::StatusOr<std::vector<int32_t>> tokens =
      HeldOutTokenStream(model + "/tokenizer.model", *text, 1);
  ASSERT_TRUE(tokens.ok()) << tokens.status();
  // The first tokens, as reference/ref_tokens_stories_first64.npy has them.
  const std::vector<int32_t> first = {1, 349, 3133, 487, 324, 376, 1564, 3959};
  ASSERT_GE(tokens->size(), first.size());
  EXPECT_EQ(std::vector<int32_t>(tokens->begin(), tokens->begin() + 8), first);

  absl::StatusOr<PerplexityResult> result =
      EvaluatePerplexity(model, *tokens, PerplexityOptions());
  ASSERT_TRUE(result.ok()) << result.status();
  absl::StatusOr<std::string> reference =
      ReadFileToString(model + "/reference/reference.json");
  ASSERT_TRUE(reference.ok());
  const double expected =
      nlohmann::json::parse(*reference)["ppl_stories_seq512_fp32"];
  EXPECT_EQ(result->windows, static_cast<int64_t>(result->window_nll.size()));
  EXPECT_EQ(result->targets, result->windows * 512);
  EXPECT_NEAR(result->perplexity / expected, 1.0, 0.005)
      << "perplexity " << result->perplexity << " vs " << expected;
}

TEST(PerplexityTest, BadInput) {
  const std::string model = SharedModel();
  if (model.empty()) GTEST_SKIP() << "../shared/data is absent";
  const std::vector<int32_t> short_stream(100, 5);
  PerplexityOptions options;
  absl::StatusOr<PerplexityResult> result =
      EvaluatePerplexity(model, short_stream, options);
  EXPECT_EQ(result.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(result.status().message()),
              HasSubstr("a stream of 100 tokens holds no window of 512"));
  EXPECT_EQ(
      HeldOutTokenStream("/no/such/tokenizer.model", "x", 1).status().code(),
      absl::StatusCode::kInvalidArgument);
  std::vector<int32_t> bad(600, 5);
  bad[10] = 999999;
  options.context = 64;
  EXPECT_EQ(EvaluatePerplexity(model, bad, options).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace quant
