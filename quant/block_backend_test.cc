#include "quant/block_backend.h"

#include <atomic>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/test_data.h"
#include "convert/tiny_llama.h"
#include "format/model_config.h"
#include "format/safetensors.h"
#include "gtest/gtest.h"

namespace quant {
namespace {

struct Fixture {
  ModelSpec spec;
  DecoderBlockWeights block;
  std::vector<float> hidden;
  int64_t sequences = 3, seq_len = 16;
};

Fixture MakeFixture(int64_t sequences = 3) {
  Fixture f;
  f.sequences = sequences;
  const std::string dir = MakeTestTempDir("block_backend");
  EXPECT_TRUE(WriteTinyLlama(dir, TinyLlamaOptions()).ok());
  f.spec = *LoadModelConfig(dir);
  const auto checkpoint = *SafetensorsCheckpoint::Open(dir);
  f.block = *LoadDecoderBlock(*checkpoint, f.spec, 0);
  std::mt19937 rng(5);
  std::uniform_int_distribution<int32_t> id(0, f.spec.vocab_size - 1);
  std::vector<int32_t> tokens(f.sequences * f.seq_len);
  for (int32_t& t : tokens) t = id(rng);
  f.hidden.resize(tokens.size() * f.spec.hidden_size);
  const LlamaForward forward(f.spec, f.seq_len);
  EXPECT_TRUE(forward.Embed(*checkpoint, tokens, f.hidden.data()).ok());
  return f;
}

BlockRecipe GptqRecipe() {
  BlockRecipe recipe;
  recipe.method = QuantMethod::kGptq;
  for (WeightFormat& format : recipe.formats) {
    format.bits = 4, format.group_size = 32, format.sym = false;
  }
  recipe.sequences_per_pass = 2;
  return recipe;
}

TEST(BlockBackendTest, CpuBackendIsTheEngineBitForBit) {
  const Fixture f = MakeFixture();
  const LlamaForward forward(f.spec, f.seq_len);
  const BlockRecipe recipe = GptqRecipe();
  std::vector<float> direct = f.hidden, through = f.hidden;
  absl::StatusOr<BlockResult> a = QuantizeBlock(
      forward, f.block, recipe, f.sequences, f.seq_len, direct.data());
  ASSERT_TRUE(a.ok()) << a.status();
  absl::StatusOr<std::unique_ptr<BlockBackend>> cpu = MakeBlockBackend("cpu");
  ASSERT_TRUE(cpu.ok()) << cpu.status();
  EXPECT_EQ((*cpu)->kernel().backend, "cpu");
  EXPECT_EQ((*cpu)->Unsupported(recipe), "");
  absl::StatusOr<BlockResult> b = (*cpu)->QuantizeBlock(
      forward, f.block, recipe, f.sequences, f.seq_len, through.data());
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(0, std::memcmp(direct.data(), through.data(),
                           direct.size() * sizeof(float)));
  for (int i = 0; i < kBlockLinears; ++i) {
    EXPECT_EQ(a->quantized[i].q, b->quantized[i].q) << i;
    EXPECT_EQ(a->reports[i].proxy_loss, b->reports[i].proxy_loss) << i;
  }
  EXPECT_EQ(b->backend, "cpu");

  std::vector<float> forwarded = f.hidden, expected = f.hidden;
  ASSERT_TRUE((*cpu)
                  ->ForwardBlock(forward, f.block, f.sequences, f.seq_len, 2,
                                 forwarded.data())
                  .ok());
  ASSERT_TRUE(ForwardBlockInPasses(forward, f.block, f.sequences, f.seq_len, 2,
                                   expected.data())
                  .ok());
  EXPECT_EQ(forwarded, expected);
}

// A backend's pieces composed in stages are the engine's sharded block
// (the CPU's, bit for bit): what a data-parallel job of its workers gets.
TEST(BlockBackendTest, PiecesInStagesAreTheShardedBlock) {
  // Three passes of 2, the last short: three shards.
  const Fixture f = MakeFixture(5);
  const LlamaForward forward(f.spec, f.seq_len);
  CpuBlockBackend cpu;
  for (QuantMethod method : {QuantMethod::kGptq, QuantMethod::kRtn}) {
    BlockRecipe recipe = GptqRecipe();
    recipe.method = method;
    recipe.calibration_shards = 3;
    std::vector<float> engine = f.hidden, pieces = f.hidden;
    absl::StatusOr<BlockResult> a = QuantizeBlock(
        forward, f.block, recipe, f.sequences, f.seq_len, engine.data());
    ASSERT_TRUE(a.ok()) << a.status();
    absl::StatusOr<BlockResult> b = QuantizeBlockInStages(
        cpu, forward, f.block, recipe, f.sequences, f.seq_len, pieces.data());
    ASSERT_TRUE(b.ok()) << b.status();
    EXPECT_EQ(engine, pieces);
    for (int i = 0; i < kBlockLinears; ++i) {
      EXPECT_EQ(a->quantized[i].q, b->quantized[i].q) << i;
      EXPECT_EQ(a->quantized[i].scales, b->quantized[i].scales) << i;
      EXPECT_EQ(a->importance[i], b->importance[i]) << i;
      EXPECT_EQ(a->reports[i].proxy_loss, b->reports[i].proxy_loss) << i;
    }
    EXPECT_EQ(b->backend, "cpu");
  }
  BlockRecipe awq = GptqRecipe();
  awq.method = QuantMethod::kAwq;
  std::vector<float> hidden = f.hidden;
  EXPECT_EQ(QuantizeBlockInStages(cpu, forward, f.block, awq, f.sequences,
                                  f.seq_len, hidden.data())
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
}

// A CPU backend that names a device, as a GPU's kernel class does, and
// counts the pieces it ran (from whichever thread).
class CountingBackend : public CpuBlockBackend {
 public:
  explicit CountingBackend(int device, std::string model = "Model X")
      : device_(device), model_(std::move(model)) {}
  ComputeKernel kernel() const override {
    return {"cpu", absl::StrCat(model_, " (GPU ", device_, ", 1 GiB)")};
  }
  absl::StatusOr<BlockStatistics> CaptureStageStatistics(
      const LlamaForward& forward, const DecoderBlockWeights& weights,
      const BlockRecipe& recipe, int stage, int64_t sequences, int64_t seq_len,
      const float* hidden) override {
    ++captures;
    return CpuBlockBackend::CaptureStageStatistics(
        forward, weights, recipe, stage, sequences, seq_len, hidden);
  }
  absl::Status SolveStage(const BlockRecipe& recipe, int stage,
                          const BlockStatistics& statistics,
                          BlockResult& partial) override {
    ++solves;
    return CpuBlockBackend::SolveStage(recipe, stage, statistics, partial);
  }
  absl::Status ForwardBlock(const LlamaForward& forward,
                            const DecoderBlockWeights& block, int64_t sequences,
                            int64_t seq_len, int64_t sequences_per_pass,
                            float* hidden) override {
    forwarded += sequences;
    return CpuBlockBackend::ForwardBlock(forward, block, sequences, seq_len,
                                         sequences_per_pass, hidden);
  }
  std::atomic<int> captures{0}, solves{0};
  std::atomic<int64_t> forwarded{0};

 private:
  int device_;
  std::string model_;
};

// A group of devices computes a sharded block as one of them does, bit for
// bit, with the shards' captures and the forward's passes spread over all
// of them; shards that do not divide evenly, and more devices than passes.
TEST(BlockBackendTest, DeviceGroupIsOneDeviceBitForBit) {
  // Seven sequences in passes of 2: four passes, the last short.
  const Fixture f = MakeFixture(7);
  const LlamaForward forward(f.spec, f.seq_len);
  CpuBlockBackend one;
  for (int devices : {2, 3, 5}) {
    std::vector<std::unique_ptr<BlockBackend>> members;
    std::vector<CountingBackend*> counted;
    for (int d = 0; d < devices; ++d) {
      auto member = std::make_unique<CountingBackend>(d);
      counted.push_back(member.get());
      members.push_back(std::move(member));
    }
    absl::StatusOr<std::unique_ptr<DeviceGroupBackend>> group =
        DeviceGroupBackend::Create(std::move(members));
    ASSERT_TRUE(group.ok()) << group.status();
    EXPECT_EQ((*group)->size(), devices);
    const std::string kernel = (*group)->kernel().kernel;
    EXPECT_EQ(kernel.rfind("Model X (GPUs 0+1", 0), 0) << kernel;
    for (QuantMethod method : {QuantMethod::kGptq, QuantMethod::kRtn}) {
      BlockRecipe recipe = GptqRecipe();
      recipe.method = method;
      recipe.calibration_shards = 3;
      std::vector<float> alone = f.hidden, grouped = f.hidden;
      absl::StatusOr<BlockResult> a = QuantizeBlockInStages(
          one, forward, f.block, recipe, f.sequences, f.seq_len, alone.data());
      ASSERT_TRUE(a.ok()) << a.status();
      for (CountingBackend* member : counted) {
        member->captures = 0, member->solves = 0, member->forwarded = 0;
      }
      absl::StatusOr<BlockResult> b = (*group)->QuantizeBlock(
          forward, f.block, recipe, f.sequences, f.seq_len, grouped.data());
      ASSERT_TRUE(b.ok()) << b.status();
      EXPECT_EQ(0, std::memcmp(alone.data(), grouped.data(),
                               alone.size() * sizeof(float)));
      for (int i = 0; i < kBlockLinears; ++i) {
        EXPECT_EQ(a->quantized[i].q, b->quantized[i].q) << i;
        EXPECT_EQ(a->quantized[i].scales, b->quantized[i].scales) << i;
        EXPECT_EQ(a->quantized[i].zeros, b->quantized[i].zeros) << i;
        EXPECT_EQ(a->importance[i], b->importance[i]) << i;
        EXPECT_EQ(a->reports[i].proxy_loss, b->reports[i].proxy_loss) << i;
      }
      EXPECT_EQ(b->kernel, kernel);
      // Shard k on member k % devices, every stage; solves on the first;
      // the forward's four passes over min(devices, 4) members.
      const int stages = static_cast<int>(CalibrationStages(recipe).size());
      int64_t forwarded = 0;
      for (int d = 0; d < devices; ++d) {
        const int shards_here = d < 3 ? (3 - d + devices - 1) / devices : 0;
        EXPECT_EQ(counted[d]->captures, shards_here * stages) << d;
        EXPECT_EQ(counted[d]->solves, d == 0 ? stages : 0) << d;
        EXPECT_EQ(counted[d]->forwarded > 0, d < 4) << d;
        forwarded += counted[d]->forwarded;
      }
      EXPECT_EQ(forwarded, f.sequences);
    }
    // Unsharded, the first device computes the block alone.
    const BlockRecipe whole = GptqRecipe();
    std::vector<float> alone = f.hidden, grouped = f.hidden;
    absl::StatusOr<BlockResult> a = one.QuantizeBlock(
        forward, f.block, whole, f.sequences, f.seq_len, alone.data());
    absl::StatusOr<BlockResult> b = (*group)->QuantizeBlock(
        forward, f.block, whole, f.sequences, f.seq_len, grouped.data());
    ASSERT_TRUE(a.ok() && b.ok());
    EXPECT_EQ(alone, grouped);
    EXPECT_EQ(a->quantized[6].q, b->quantized[6].q);
  }
}

TEST(BlockBackendTest, DeviceGroupForwardIsOnePassAtATime) {
  const Fixture f = MakeFixture(7);
  const LlamaForward forward(f.spec, f.seq_len);
  std::vector<std::unique_ptr<BlockBackend>> members;
  for (int d : {4, 6, 7})
    members.push_back(std::make_unique<CountingBackend>(d));
  absl::StatusOr<std::unique_ptr<DeviceGroupBackend>> group =
      DeviceGroupBackend::Create(std::move(members));
  ASSERT_TRUE(group.ok()) << group.status();
  EXPECT_EQ((*group)->kernel().kernel, "Model X (GPUs 4+6+7, 1 GiB)");
  std::vector<float> grouped = f.hidden, expected = f.hidden;
  ASSERT_TRUE((*group)
                  ->ForwardBlock(forward, f.block, f.sequences, f.seq_len, 2,
                                 grouped.data())
                  .ok());
  ASSERT_TRUE(ForwardBlockInPasses(forward, f.block, f.sequences, f.seq_len, 2,
                                   expected.data())
                  .ok());
  EXPECT_EQ(0, std::memcmp(expected.data(), grouped.data(),
                           expected.size() * sizeof(float)));
}

TEST(BlockBackendTest, DeviceGroupOfMixedKernelsIsRefused) {
  EXPECT_EQ(DeviceGroupBackend::Create({}).status().code(),
            absl::StatusCode::kInvalidArgument);
  std::vector<std::unique_ptr<BlockBackend>> members;
  members.push_back(std::make_unique<CountingBackend>(0, "Model X"));
  members.push_back(std::make_unique<CountingBackend>(1, "Model Y"));
  absl::StatusOr<std::unique_ptr<DeviceGroupBackend>> mixed =
      DeviceGroupBackend::Create(std::move(members));
  EXPECT_EQ(mixed.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(mixed.status().message().find("Model Y"), std::string::npos);
  std::vector<std::unique_ptr<BlockBackend>> cpu_and_device;
  cpu_and_device.push_back(std::make_unique<CpuBlockBackend>());
  cpu_and_device.push_back(std::make_unique<CountingBackend>(0));
  EXPECT_EQ(
      DeviceGroupBackend::Create(std::move(cpu_and_device)).status().code(),
      absl::StatusCode::kInvalidArgument);
}

TEST(BlockBackendTest, UnknownAndMissingBackendsAreNamed) {
  absl::StatusOr<std::unique_ptr<BlockBackend>> none = MakeBlockBackend("tpu");
  EXPECT_EQ(none.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(none.status().message().find("tpu"), std::string::npos);
  // This test binary never links the GPU backend.
  absl::StatusOr<std::unique_ptr<BlockBackend>> cuda = MakeBlockBackend("cuda");
  EXPECT_EQ(cuda.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(cuda.status().message().find("no GPU backend"), std::string::npos);
}

// A backend that declines every recipe: QuantizeBlockOn hands the block to
// the CPU engine and the result says so.
class DecliningBackend : public CpuBlockBackend {
 public:
  ComputeKernel kernel() const override { return {"declining", "none"}; }
  std::string Unsupported(const BlockRecipe&) const override {
    return "declines everything";
  }
  absl::StatusOr<BlockResult> QuantizeBlock(const LlamaForward&,
                                            DecoderBlockWeights,
                                            const BlockRecipe&, int64_t,
                                            int64_t, float*) override {
    return absl::InternalError("must not run");
  }
};

TEST(BlockBackendTest, RegisteredFactoryAndCpuFallback) {
  RegisterBlockBackend("declining", [](int device) {
    EXPECT_EQ(device, 3);
    return absl::StatusOr<std::unique_ptr<BlockBackend>>(
        std::make_unique<DecliningBackend>());
  });
  absl::StatusOr<std::unique_ptr<BlockBackend>> declining =
      MakeBlockBackend("declining", 3);
  ASSERT_TRUE(declining.ok()) << declining.status();
  EXPECT_EQ((*declining)->kernel().backend, "declining");
  CpuBlockBackend cpu;
  const Fixture f = MakeFixture();
  const LlamaForward forward(f.spec, f.seq_len);
  std::vector<float> hidden = f.hidden;
  absl::StatusOr<BlockResult> done =
      QuantizeBlockOn(**declining, cpu, forward, f.block, GptqRecipe(),
                      f.sequences, f.seq_len, hidden.data());
  ASSERT_TRUE(done.ok()) << done.status();
  EXPECT_EQ(done->backend, "cpu");
}

TEST(BlockBackendTest, DeviceLists) {
  EXPECT_EQ(*ParseDeviceList("0"), std::vector<int>({0}));
  EXPECT_EQ(*ParseDeviceList("2, 0,7"), std::vector<int>({2, 0, 7}));
  for (const char* bad : {"", "0,", "a", "-1", "1,1", "0;1"}) {
    EXPECT_EQ(ParseDeviceList(bad).status().code(),
              absl::StatusCode::kInvalidArgument)
        << bad;
  }
  EXPECT_EQ(*GroupDevices({3, 1, 2, 0}, 2),
            (std::vector<std::vector<int>>{{3, 1}, {2, 0}}));
  EXPECT_EQ(*GroupDevices({0, 1}, 1),
            (std::vector<std::vector<int>>{{0}, {1}}));
  for (int bad : {0, 3, -1}) {
    absl::StatusOr<std::vector<std::vector<int>>> grouped =
        GroupDevices({0, 1, 2, 3}, bad);
    EXPECT_EQ(grouped.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(grouped.status().message().find("devices_per_task"),
              std::string::npos);
  }
  // CPU backends (any "device") group; a missing backend is named.
  absl::StatusOr<std::unique_ptr<BlockBackend>> cpus =
      MakeBlockBackendGroup("cpu", {0, 1});
  ASSERT_TRUE(cpus.ok()) << cpus.status();
  EXPECT_NE(dynamic_cast<DeviceGroupBackend*>(cpus->get()), nullptr);
  EXPECT_EQ(MakeBlockBackendGroup("cuda", {0, 1}).status().code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST(BlockBackendTest, CalibratedMethodWithoutDataIsRefused) {
  const Fixture f = MakeFixture();
  absl::StatusOr<BlockResult> started =
      StartBlockResult(f.block, GptqRecipe(), 0, 0);
  EXPECT_EQ(started.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(started.status().message().find("needs calibration data"),
            std::string::npos);
  EXPECT_EQ(StartBlockResult(f.block, GptqRecipe(), 2, 0).status().code(),
            absl::StatusCode::kInvalidArgument);
  BlockRecipe kept = GptqRecipe();
  kept.keep_fp[2] = KeptLinear{"test", SafetensorsDType::kBF16};
  absl::StatusOr<BlockResult> ok = StartBlockResult(f.block, kept, 2, 16);
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ(ok->reports[2].kept_fp, "test");
  EXPECT_EQ(ok->reports[0].bits, 4);
  EXPECT_EQ(ok->reports[0].name, "self_attn.q_proj");
}

}  // namespace
}  // namespace quant
