#include "worker/task_runner.h"

#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/checksum.h"
#include "common/file.h"
#include "common/test_data.h"
#include "convert/tiny_llama.h"
#include "format/safetensors.h"
#include "gtest/gtest.h"
#include "model/calibration.h"
#include "proto/recipe.h"
#include "proto/task_tensors.h"
#include "quant/block_store.h"
#include "quant/quantize_model.h"

namespace quant {
namespace {

struct Input {
  std::string name;
  SafetensorsDType dtype;
  std::vector<int64_t> shape;
  const void* data;
  size_t bytes;
};

// The inputs file a worker assembles from what it fetched.
void WriteInputs(const std::string& path, const std::vector<Input>& inputs) {
  auto writer = SafetensorsWriter::Create(path);
  ASSERT_TRUE(writer.ok());
  for (const Input& in : inputs) {
    ASSERT_TRUE((*writer)->AddTensor(in.name, in.dtype, in.shape).ok());
  }
  for (const Input& in : inputs) {
    ASSERT_TRUE((*writer)->WriteTensorData(in.name, in.data, in.bytes).ok());
  }
  ASSERT_TRUE((*writer)->Finish().ok());
}

std::vector<Input> BlockInputs(const SafetensorsCheckpoint& checkpoint,
                               int layer) {
  std::vector<Input> inputs;
  const std::string prefix = absl::StrCat("model.layers.", layer, ".");
  for (const std::string& name : checkpoint.TensorNames()) {
    if (name.rfind(prefix, 0) != 0) continue;
    const TensorView t = *checkpoint.Get(name);
    inputs.push_back({name, t.dtype, t.shape, t.data, t.nbytes});
  }
  return inputs;
}

// Same tensors, byte for byte (the metadata holds timings).
void ExpectSameTensors(const std::string& a, const std::string& b) {
  auto fa = SafetensorsFile::Open(a);
  auto fb = SafetensorsFile::Open(b);
  ASSERT_TRUE(fa.ok() && fb.ok());
  ASSERT_EQ((*fa)->tensors().size(), (*fb)->tensors().size());
  for (const TensorView& t : (*fa)->tensors()) {
    const TensorView* u = (*fb)->Find(t.name);
    ASSERT_NE(u, nullptr) << t.name;
    EXPECT_TRUE(t.dtype == u->dtype && t.shape == u->shape &&
                t.nbytes == u->nbytes &&
                std::memcmp(t.data, u->data, t.nbytes) == 0)
        << t.name;
  }
}

// An output's digest, computed as it was written, is the file's.
void ExpectDigestOfFile(const TaskRunResult& result, const std::string& path,
                        const std::string& output = kActivationsTensor) {
  const auto digest = result.digest.find(output);
  ASSERT_NE(digest, result.digest.end());
  const absl::StatusOr<std::string> file = ContentDigestOfFile(path);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ(digest->second, *file);
}

class TaskRunnerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = MakeTestTempDir("task_runner");
    model_ = dir_ + "/model";
    ASSERT_TRUE(WriteTinyLlama(model_, TinyLlamaOptions()).ok());
    const std::string tokens = dir_ + "/tokens.txt";
    std::ofstream out(tokens);
    std::mt19937 rng(3);
    for (int i = 0; i < 2000; ++i) out << rng() % 500 << " ";
    out.close();
    options_.model_dir = model_;
    options_.calibration.tokens_path = tokens;
    options_.calibration.samples = 4;
    options_.calibration.seq_len = 40;
    options_.sequences_per_pass = 3;
    options_.weights = {4, 64, false};
  }

  v1::TaskSpec Spec(v1::TaskKind kind, int layer) {
    v1::TaskSpec spec;
    spec.set_kind(kind);
    spec.set_layer(layer);
    spec.set_model_config_json(*ReadFileToString(model_ + "/config.json"));
    *spec.mutable_recipe() = RecipeFromOptions(options_);
    spec.set_norm_dtype("F32");
    spec.set_sequences(options_.calibration.samples);
    spec.set_seq_len(options_.calibration.seq_len);
    return spec;
  }

  // Runs the embed task on the calibration windows; `activations` is the
  // file it writes.
  void Embed(const SafetensorsCheckpoint& checkpoint, std::string* activations,
             std::shared_ptr<std::vector<float>>* values = nullptr) {
    const auto windows = LoadCalibrationWindows(model_, options_.calibration);
    ASSERT_TRUE(windows.ok());
    const TensorView embedding = *checkpoint.Get("model.embed_tokens.weight");
    WriteInputs(dir_ + "/embed.in",
                {{kWindowsTensor,
                  SafetensorsDType::kI32,
                  {options_.calibration.samples, options_.calibration.seq_len},
                  windows->data(),
                  windows->size() * sizeof(int32_t)},
                 {embedding.name, embedding.dtype, embedding.shape,
                  embedding.data, embedding.nbytes}});
    v1::TaskSpec embed = Spec(v1::TASK_KIND_EMBED, -1);
    embed.add_outputs(kActivationsTensor);
    std::filesystem::create_directories(dir_ + "/embed.out");
    const auto embedded =
        RunTask(embed, dir_ + "/embed.in", dir_ + "/embed.out");
    ASSERT_TRUE(embedded.ok()) << embedded.status();
    ASSERT_EQ(embedded->outputs.size(), 1u);
    *activations = embedded->outputs[0].second;
    ExpectDigestOfFile(*embedded, *activations);
    ExpectValuesOfFile(*embedded, *activations);
    if (values != nullptr) *values = embedded->activations;
  }

  // The activations a task returns in memory are the values of its file.
  static void ExpectValuesOfFile(const TaskRunResult& result,
                                 const std::string& path) {
    ASSERT_NE(result.activations, nullptr);
    auto file = SafetensorsFile::Open(path);
    ASSERT_TRUE(file.ok());
    const TensorView* hidden = (*file)->Find("hidden");
    ASSERT_NE(hidden, nullptr);
    ASSERT_EQ(hidden->nbytes, result.activations->size() * sizeof(float));
    EXPECT_EQ(
        std::memcmp(hidden->data, result.activations->data(), hidden->nbytes),
        0);
  }

  std::string dir_, model_;
  QuantizeModelOptions options_;
};

// embed -> block 0 -> block 1 through RunTask computes the files
// quantize_model computes, byte for byte, whether the activations come in
// as a fetched input or (block 1) from memory.
TEST_F(TaskRunnerTest, BlockChainMatchesTheEngineByteForByte) {
  QuantizeModelOptions whole = options_;
  whole.output = dir_ + "/whole";
  whole.work_dir = dir_ + "/whole.work";
  ASSERT_TRUE(QuantizeModel(whole).ok());
  QuantizeModelOptions staged = whole;
  staged.output = dir_ + "/staged";
  staged.work_dir = dir_ + "/staged.work";
  staged.stop_after_block = 0;
  ASSERT_TRUE(QuantizeModel(staged).ok());

  auto checkpoint = SafetensorsCheckpoint::Open(model_);
  ASSERT_TRUE(checkpoint.ok());
  std::string activations;
  ASSERT_NO_FATAL_FAILURE(Embed(**checkpoint, &activations));
  std::shared_ptr<std::vector<float>> in_memory;  // Block 1's.
  for (int layer = 0; layer < 2; ++layer) {
    auto file = SafetensorsFile::Open(activations);
    ASSERT_TRUE(file.ok());
    const TensorView* hidden = (*file)->Find("hidden");
    ASSERT_NE(hidden, nullptr);
    std::vector<Input> inputs = BlockInputs(**checkpoint, layer);
    if (layer == 0) {
      inputs.push_back({kActivationsTensor, hidden->dtype, hidden->shape,
                        hidden->data, hidden->nbytes});
    }
    const std::string in = absl::StrCat(dir_, "/block", layer, ".in");
    const std::string out = absl::StrCat(dir_, "/block", layer, ".out");
    WriteInputs(in, inputs);
    std::filesystem::create_directories(out);
    v1::TaskSpec spec = Spec(v1::TASK_KIND_BLOCK, layer);
    spec.add_outputs(kResultTensor);
    if (layer == 0) spec.add_outputs(kActivationsTensor);
    LocalInputs local;
    local.held_in_memory = in_memory;
    // Block 0's activations file is left for the caller to write.
    local.write_activations = layer != 0;
    const auto done = RunTask(spec, in, out, nullptr, local);
    ASSERT_TRUE(done.ok()) << done.status();
    if (layer == 0) {
      ASSERT_TRUE(done->activations_unwritten);
      EXPECT_FALSE(std::filesystem::exists(done->outputs[1].second));
      std::string written_digest;
      ASSERT_TRUE(SaveActivations(done->outputs[1].second, *done->activations,
                                  spec.sequences(), spec.seq_len(),
                                  hidden->shape[2], Durability::kScratch,
                                  &written_digest)
                      .ok());
      EXPECT_EQ(done->digest.at(kActivationsTensor), written_digest);
      EXPECT_EQ(done->activations_file_bytes,
                std::filesystem::file_size(done->outputs[1].second));
    }
    // Moved out of memory: the block overwrote them.
    if (layer == 1) EXPECT_TRUE(in_memory->empty());
    ASSERT_EQ(done->outputs.size(), layer == 0 ? 2u : 1u);
    EXPECT_EQ(done->outputs[0].first, kResultTensor);
    ExpectSameTensors(done->outputs[0].second,
                      BlockResultPath(whole.work_dir, layer));
    ExpectDigestOfFile(*done, done->outputs[0].second, kResultTensor);
    if (layer == 0) {
      activations = done->outputs[1].second;
      ExpectDigestOfFile(*done, activations);
      ExpectValuesOfFile(*done, activations);
      in_memory = done->activations;
      EXPECT_TRUE(*ReadFileToString(activations) ==
                  *ReadFileToString(ActivationsPath(staged.work_dir, 1)));
    }
  }
}

// A data-parallel block: per stage, each shard's CAPTURE and one SOLVE on
// their statistics, then each shard's FORWARD of the quantized block,
// compute the BLOCK task's result and activations (same recipe) bit for bit.
TEST_F(TaskRunnerTest, DataParallelStagesMatchTheBlockTask) {
  options_.calibration_shards = 2;  // 4 sequences, passes of 3: 3 + 1.
  auto checkpoint = SafetensorsCheckpoint::Open(model_);
  ASSERT_TRUE(checkpoint.ok());
  std::string embedded;
  ASSERT_NO_FATAL_FAILURE(Embed(**checkpoint, &embedded));
  const int64_t seq_len = options_.calibration.seq_len;
  auto activations = SafetensorsFile::Open(embedded);
  ASSERT_TRUE(activations.ok());
  const TensorView hidden = *(*activations)->Find("hidden");

  // The reference: one BLOCK task.
  std::vector<Input> inputs = BlockInputs(**checkpoint, 0);
  inputs.push_back({kActivationsTensor, hidden.dtype, hidden.shape, hidden.data,
                    hidden.nbytes});
  WriteInputs(dir_ + "/block.in", inputs);
  std::filesystem::create_directories(dir_ + "/block.out");
  v1::TaskSpec block = Spec(v1::TASK_KIND_BLOCK, 0);
  block.add_outputs(kResultTensor);
  block.add_outputs(kActivationsTensor);
  const auto reference =
      RunTask(block, dir_ + "/block.in", dir_ + "/block.out");
  ASSERT_TRUE(reference.ok()) << reference.status();

  const int64_t dim = hidden.shape[2];
  const int64_t row_bytes = seq_len * dim * sizeof(float);
  const int64_t first[] = {0, 3}, count[] = {3, 1};
  std::string result;  // The latest SOLVE's output file, as bytes.
  auto with_result = [&](std::vector<Input> in) {
    if (!result.empty()) {
      in.push_back({kResultTensor,
                    SafetensorsDType::kU8,
                    {static_cast<int64_t>(result.size())},
                    result.data(),
                    result.size()});
    }
    return in;
  };
  // Shard 1's captures read its activations held in memory, in place.
  const float* shard1 =
      reinterpret_cast<const float*>(hidden.data + first[1] * row_bytes);
  const auto shard1_values = std::make_shared<std::vector<float>>(
      shard1, shard1 + count[1] * seq_len * dim);
  const std::vector<float> shard1_copy = *shard1_values;
  for (int stage = 0; stage < 4; ++stage) {
    std::vector<std::string> statistics(2);
    for (int k = 0; k < 2; ++k) {
      std::vector<Input> in = BlockInputs(**checkpoint, 0);
      LocalInputs local;
      if (k == 0) {
        in.push_back({kActivationsTensor,
                      SafetensorsDType::kF32,
                      {count[k], seq_len, dim},
                      hidden.data + first[k] * row_bytes,
                      static_cast<size_t>(count[k] * row_bytes)});
      } else {
        local.held_in_memory = shard1_values;
      }
      const std::string name = absl::StrCat(dir_, "/capture", stage, k);
      WriteInputs(name + ".in", with_result(in));
      std::filesystem::create_directories(name + ".out");
      v1::TaskSpec spec = Spec(v1::TASK_KIND_CAPTURE, 0);
      spec.set_stage(stage);
      spec.set_shard(k);
      spec.set_shards(2);
      spec.set_sequences(count[k]);
      spec.add_outputs(kStatisticsTensor);
      const auto captured =
          RunTask(spec, name + ".in", name + ".out", nullptr, local);
      ASSERT_TRUE(captured.ok()) << captured.status();
      EXPECT_TRUE(*shard1_values == shard1_copy);  // Read, not moved.
      EXPECT_EQ(captured->activations, nullptr);
      statistics[k] = *ReadFileToString(captured->outputs[0].second);
    }
    std::vector<Input> in = BlockInputs(**checkpoint, 0);
    for (int k = 0; k < 2; ++k) {
      in.push_back({absl::StrCat(kStatisticsTensor, ".", k),
                    SafetensorsDType::kU8,
                    {static_cast<int64_t>(statistics[k].size())},
                    statistics[k].data(),
                    statistics[k].size()});
    }
    const std::string name = absl::StrCat(dir_, "/solve", stage);
    WriteInputs(name + ".in", with_result(in));
    std::filesystem::create_directories(name + ".out");
    v1::TaskSpec spec = Spec(v1::TASK_KIND_SOLVE, 0);
    spec.set_stage(stage);
    spec.set_shards(2);
    spec.add_outputs(kResultTensor);
    const auto solved = RunTask(spec, name + ".in", name + ".out");
    ASSERT_TRUE(solved.ok()) << solved.status();
    result = *ReadFileToString(solved->outputs[0].second);
    if (stage == 3) {
      ExpectSameTensors(solved->outputs[0].second,
                        reference->outputs[0].second);
    }
  }
  // Each shard's next activations from the quantized block.
  std::string forwarded;
  for (int k = 0; k < 2; ++k) {
    const std::string name = absl::StrCat(dir_, "/forward", k);
    WriteInputs(name + ".in",
                with_result({{kActivationsTensor,
                              SafetensorsDType::kF32,
                              {count[k], seq_len, dim},
                              hidden.data + first[k] * row_bytes,
                              static_cast<size_t>(count[k] * row_bytes)}}));
    std::filesystem::create_directories(name + ".out");
    v1::TaskSpec spec = Spec(v1::TASK_KIND_FORWARD, 0);
    spec.set_shard(k);
    spec.set_shards(2);
    spec.set_sequences(count[k]);
    const auto done = RunTask(spec, name + ".in", name + ".out");
    ASSERT_TRUE(done.ok()) << done.status();
    auto out = SafetensorsFile::Open(done->outputs[0].second);
    ASSERT_TRUE(out.ok());
    const TensorView* next = (*out)->Find("hidden");
    forwarded.append(reinterpret_cast<const char*>(next->data), next->nbytes);
  }
  auto whole = SafetensorsFile::Open(reference->outputs[1].second);
  ASSERT_TRUE(whole.ok());
  const TensorView* next = (*whole)->Find("hidden");
  EXPECT_TRUE(
      forwarded ==
      std::string(reinterpret_cast<const char*>(next->data), next->nbytes));
}

TEST_F(TaskRunnerTest, BadInputIsTheTasksFault) {
  auto checkpoint = SafetensorsCheckpoint::Open(model_);
  ASSERT_TRUE(checkpoint.ok());
  // Activations of the wrong shape.
  std::vector<float> hidden(10, 0.5f);
  std::vector<Input> inputs = BlockInputs(**checkpoint, 0);
  inputs.push_back({kActivationsTensor,
                    SafetensorsDType::kF32,
                    {10},
                    hidden.data(),
                    hidden.size() * sizeof(float)});
  WriteInputs(dir_ + "/bad.in", inputs);
  v1::TaskSpec spec = Spec(v1::TASK_KIND_BLOCK, 0);
  spec.add_outputs(kResultTensor);
  absl::Status status = RunTask(spec, dir_ + "/bad.in", dir_).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("activations"), absl::string_view::npos)
      << status.message();
  // Activations held in memory of another size.
  LocalInputs local;
  local.held_in_memory = std::make_shared<std::vector<float>>(10, 0.5f);
  status = RunTask(spec, dir_ + "/bad.in", dir_, nullptr, local).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("held in memory: 10 values"),
            absl::string_view::npos)
      << status.message();
  // An output the kind does not make.
  spec.set_kind(v1::TASK_KIND_FORWARD);
  spec.set_sequences(0);
  spec.clear_outputs();
  spec.add_outputs(kResultTensor);
  status = RunTask(spec, dir_ + "/bad.in", dir_).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  // A config that is not JSON.
  spec = Spec(v1::TASK_KIND_BLOCK, 0);
  spec.set_model_config_json("{");
  EXPECT_FALSE(RunTask(spec, dir_ + "/bad.in", dir_).ok());
}

}  // namespace
}  // namespace quant
