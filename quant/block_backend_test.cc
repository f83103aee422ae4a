#include "quant/block_backend.h"

#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

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
