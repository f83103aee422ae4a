#include "coordinator/weight_checksums.h"

#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "common/checksum.h"
#include "common/test_data.h"
#include "convert/tiny_llama.h"
#include "format/safetensors.h"
#include "gtest/gtest.h"
#include "proto/task_tensors.h"

namespace quant {
namespace {

class WeightChecksumsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = MakeTestTempDir("weight_checksums");
    model_ = dir_ + "/model";
    ASSERT_TRUE(WriteTinyLlama(model_, TinyLlamaOptions()).ok());
    job_dir_ = dir_ + "/job";
    std::filesystem::create_directories(job_dir_);
    // embed -> block 0 -> block 1 -> head.
    plan_.num_layers = 2;
    plan_.head_types = {{"lm_head.weight", "Q6_K"},
                        {"model.embed_tokens.weight", "Q4_K"},
                        {"model.norm.weight", "F32"}};
    const char* kinds[] = {kEmbedTask, kBlockTask, kBlockTask, kHeadTask};
    for (int i = 0; i < 4; ++i) {
      TaskRow task;
      task.index = i;
      task.kind = kinds[i];
      task.layer = i == 0 || i == 3 ? -1 : i - 1;
      tasks_.push_back(task);
    }
  }
  // The content digest (hex) of the model's tensor `name`.
  std::string Expected(const std::string& name) {
    auto model = SafetensorsCheckpoint::Open(model_);
    const TensorView view = *(*model)->Get(name);
    return HexOf(ContentDigestOf(absl::string_view(
        reinterpret_cast<const char*>(view.data), view.nbytes)));
  }

  std::string dir_, model_, job_dir_;
  JobPlan plan_;
  std::vector<TaskRow> tasks_;
};

TEST_F(WeightChecksumsTest, RecordsEveryTensorInTaskOrder) {
  std::vector<std::string> order;
  ASSERT_TRUE(
      RecordWeightChecksums(model_, job_dir_, plan_, tasks_, nullptr,
                            [&](const std::string& name, const std::string&) {
                              order.push_back(name);
                            })
          .ok());
  auto model = SafetensorsCheckpoint::Open(model_);
  ASSERT_TRUE(model.ok());
  // Every tensor once: the embedding first, then the blocks in order, the
  // head's last (the embedding is one of them and not hashed twice).
  EXPECT_EQ(order.size(), (*model)->TensorNames().size());
  ASSERT_FALSE(order.empty());
  EXPECT_EQ(order.front(), "model.embed_tokens.weight");
  EXPECT_TRUE(absl::StartsWith(order[1], "model.layers.0."));
  EXPECT_TRUE(absl::StartsWith(order[order.size() - 3], "model.layers.1."));
  const std::map<std::string, std::string> sums = LoadWeightChecksums(job_dir_);
  EXPECT_EQ(sums.size(), order.size());
  for (const std::string& name : order) {
    EXPECT_EQ(sums.at(name), Expected(name)) << name;
  }
  // A second run finds everything recorded.
  int again = 0;
  ASSERT_TRUE(RecordWeightChecksums(
                  model_, job_dir_, plan_, tasks_, nullptr,
                  [&](const std::string&, const std::string&) { ++again; })
                  .ok());
  EXPECT_EQ(again, 0);
}

TEST_F(WeightChecksumsTest, ATornLineIsHashedAgainAndStopKeepsWhatIsDone) {
  int recorded = 0;
  ASSERT_TRUE(RecordWeightChecksums(
                  model_, job_dir_, plan_, tasks_,
                  [&] { return recorded == 2; },
                  [&](const std::string&, const std::string&) { ++recorded; })
                  .ok());
  EXPECT_EQ(LoadWeightChecksums(job_dir_).size(), 2u);
  // A crash in the middle of the third line.
  std::ofstream(WeightChecksumsPath(job_dir_), std::ios::app) << "0123abc";
  EXPECT_EQ(LoadWeightChecksums(job_dir_).size(), 2u);
  ASSERT_TRUE(
      RecordWeightChecksums(model_, job_dir_, plan_, tasks_, nullptr, nullptr)
          .ok());
  const std::map<std::string, std::string> sums = LoadWeightChecksums(job_dir_);
  auto model = SafetensorsCheckpoint::Open(model_);
  EXPECT_EQ(sums.size(), (*model)->TensorNames().size());
  for (const auto& [name, hex] : sums) EXPECT_EQ(hex, Expected(name)) << name;
  // A model without a tensor the tasks read: named.
  plan_.head_types["model.missing.weight"] = "F32";
  const absl::Status missing =
      RecordWeightChecksums(model_, job_dir_, plan_, tasks_, nullptr, nullptr);
  EXPECT_FALSE(missing.ok());
  EXPECT_TRUE(absl::StrContains(missing.message(), "model.missing.weight"))
      << missing;
}

}  // namespace
}  // namespace quant
