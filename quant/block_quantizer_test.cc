#include "quant/block_quantizer.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "common/test_data.h"
#include "convert/tiny_llama.h"
#include "format/model_config.h"
#include "format/safetensors.h"
#include "gtest/gtest.h"
#include "kernels/cpu/compute_kernel.h"

namespace quant {
namespace {

constexpr int kDownProj = 6;

struct Fixture {
  ModelSpec spec;
  DecoderBlockWeights block;
  std::vector<float> hidden;  // Activations entering block 0.
  int64_t sequences = 6, seq_len = 32;
};

Fixture MakeFixture(int64_t kv_heads) {
  Fixture f;
  const std::string dir =
      MakeTestTempDir("block_quantizer_" + std::to_string(kv_heads));
  TinyLlamaOptions options;
  options.num_kv_heads = kv_heads;
  EXPECT_TRUE(WriteTinyLlama(dir, options).ok());
  f.spec = *LoadModelConfig(dir);
  const auto checkpoint = *SafetensorsCheckpoint::Open(dir);
  f.block = *LoadDecoderBlock(*checkpoint, f.spec, 0);
  // Token embeddings of random ids, as the pipeline feeds block 0.
  const LlamaForward forward(f.spec, f.seq_len);
  std::mt19937 rng(11);
  std::uniform_int_distribution<int32_t> id(0, f.spec.vocab_size - 1);
  std::vector<int32_t> tokens(f.sequences * f.seq_len);
  for (int32_t& t : tokens) t = id(rng);
  f.hidden.resize(tokens.size() * f.spec.hidden_size);
  EXPECT_TRUE(forward.Embed(*checkpoint, tokens, f.hidden.data()).ok());
  return f;
}

BlockRecipe Recipe(QuantMethod method, int bits, int group_size) {
  BlockRecipe recipe;
  recipe.method = method;
  for (WeightFormat& format : recipe.formats) {
    format.bits = bits, format.group_size = group_size, format.sym = false;
  }
  recipe.sequences_per_pass = 4;  // Several passes over 6 sequences.
  return recipe;
}

BlockResult Quantize(const Fixture& f, const BlockRecipe& recipe,
                     std::vector<float>& hidden) {
  const LlamaForward forward(f.spec, f.seq_len);
  hidden = f.hidden;
  absl::StatusOr<BlockResult> result = QuantizeBlock(
      forward, f.block, recipe, f.sequences, f.seq_len, hidden.data());
  EXPECT_TRUE(result.ok()) << result.status();
  return *std::move(result);
}

double RelativeDifference(const std::vector<float>& a,
                          const std::vector<float>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    num += (double{a[i]} - b[i]) * (double{a[i]} - b[i]);
    den += double{b[i]} * b[i];
  }
  return std::sqrt(num / den);
}

// The largest elementwise difference relative to the largest magnitude.
double MaxDeviation(const std::vector<float>& a, const std::vector<float>& b) {
  double deviation = 0, scale = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    deviation = std::max(deviation, std::fabs(double{a[i]} - b[i]));
    scale = std::max(scale, std::fabs(double{b[i]}));
  }
  return deviation / scale;
}

// Passes of another size give other sgemm shapes, which round differently
// on some OpenBLAS kernels (Haswell, Zen: 2.4e-7 to 3.5e-7 of the largest
// activation here; Sandybridge, Nehalem: 0). A single weight one level off
// moves the output by 1e-4 (q_proj) to 3e-3 (down_proj) of it
// (OneLevelChangedIsOutsideTheCrossShapeTolerance), so 1e-5 separates
// rounding from a wrong result by more than ten times either way.
constexpr double kCrossShapeTolerance = 1e-5;

// The block computing `out` from `in` in passes of `same_pass` sequences
// (the recipe's: bit for bit on any kernel) and of `other_pass` (within the
// cross-shape tolerance).
void ExpectForwardOf(const Fixture& f, const DecoderBlockWeights& block,
                     int64_t same_pass, int64_t other_pass,
                     const std::vector<float>& out, const std::string& what) {
  const LlamaForward forward(f.spec, f.seq_len);
  std::vector<float> same = f.hidden, other = f.hidden;
  ASSERT_TRUE(ForwardBlockInPasses(forward, block, f.sequences, f.seq_len,
                                   same_pass, same.data())
                  .ok());
  ASSERT_TRUE(ForwardBlockInPasses(forward, block, f.sequences, f.seq_len,
                                   other_pass, other.data())
                  .ok());
  EXPECT_EQ(out, same) << what;
  EXPECT_LT(MaxDeviation(out, other), kCrossShapeTolerance) << what;
}

TEST(BlockQuantizerTest, OutputsAreTheQuantizedBlocksForwardPass) {
  const Fixture f = MakeFixture(2);
  for (QuantMethod method :
       {QuantMethod::kRtn, QuantMethod::kGptq, QuantMethod::kAwq}) {
    std::vector<float> out;
    const BlockResult r = Quantize(f, Recipe(method, 4, 64), out);
    ExpectForwardOf(f, r.weights, 4, 2, out,
                    std::string(QuantMethodName(method)));
    for (int i = 0; i < kBlockLinears; ++i) {
      EXPECT_EQ(r.quantized[i].Dequantize(), BlockLinear(r.weights, i).weight)
          << kBlockLinearNames[i];
      EXPECT_EQ(r.importance[i].size(),
                static_cast<size_t>(BlockLinear(r.weights, i).cols));
      EXPECT_GT(r.reports[i].relative_output_error, 0.0);
      EXPECT_LT(r.reports[i].relative_output_error, 0.2)
          << QuantMethodName(method) << " " << kBlockLinearNames[i];
    }
  }
}

// GPTQ on GGUF grids (a Q4_K_M-like mix): each linear's solution is its
// type's rows, the block computes with what they decode to, and the error
// feedback still beats plain weighted quantization of the same type.
TEST(BlockQuantizerTest, GptqOnGgufGridsGivesTheTypesRows) {
  const Fixture f = MakeFixture(2);
  BlockRecipe recipe = Recipe(QuantMethod::kGptq, 4, 32);
  for (int i = 0; i < kBlockLinears; ++i) {
    recipe.gguf_grid[i] = i == 2 || i == 6 ? GgmlType::kQ6_K : GgmlType::kQ4_K;
  }
  std::vector<float> out;
  const BlockResult r = Quantize(f, recipe, out);
  for (int i = 0; i < kBlockLinears; ++i) {
    const QuantizedLinear& q = r.quantized[i];
    const LinearWeights& linear = BlockLinear(r.weights, i);
    ASSERT_EQ(q.gguf_type, recipe.gguf_grid[i]) << kBlockLinearNames[i];
    EXPECT_EQ(q.gguf_rows.size(),
              linear.rows * *GgmlRowBytes(*q.gguf_type, linear.cols));
    EXPECT_EQ(q.Dequantize(), linear.weight);
    EXPECT_GT(r.reports[i].relative_output_error, 0.0);
    EXPECT_LT(r.reports[i].relative_output_error, 0.1) << kBlockLinearNames[i];
  }
  ExpectForwardOf(f, r.weights, 4, 3, out, "gptq on gguf grids");
}

// AutoAWQ's chaining: the next block's input is the FP block's output.
TEST(BlockQuantizerTest, AwqWithFpInputsPassesTheFpOutputsOn) {
  const Fixture f = MakeFixture(2);
  BlockRecipe recipe = Recipe(QuantMethod::kAwq, 4, 64);
  recipe.awq.fp_inputs = true;
  std::vector<float> out;
  const BlockResult r = Quantize(f, recipe, out);
  ExpectForwardOf(f, f.block, 4, 6, out, "awq with fp inputs");
  EXPECT_NE(BlockLinear(r.weights, 0).weight, f.block.q.weight);
}

// The tolerance above cannot pass a wrong result: a block whose q_proj or
// down_proj has one weight one level off computes outputs far outside it.
TEST(BlockQuantizerTest, OneLevelChangedIsOutsideTheCrossShapeTolerance) {
  const Fixture f = MakeFixture(2);
  std::vector<float> out;
  const BlockResult r = Quantize(f, Recipe(QuantMethod::kGptq, 4, 64), out);
  for (int linear : {0, 6}) {
    QuantizedLinear wrong = r.quantized[linear];
    uint8_t& level = wrong.q[wrong.q.size() / 2 + 7];
    level += level == 0 ? 1 : -1;
    DecoderBlockWeights block = r.weights;
    BlockLinear(block, linear).weight = wrong.Dequantize();
    const LlamaForward forward(f.spec, f.seq_len);
    std::vector<float> wrong_out = f.hidden;
    ASSERT_TRUE(ForwardBlockInPasses(forward, block, f.sequences, f.seq_len, 4,
                                     wrong_out.data())
                    .ok());
    EXPECT_NE(wrong_out, out);
    EXPECT_GT(MaxDeviation(wrong_out, out), 5 * kCrossShapeTolerance)
        << kBlockLinearNames[linear];
  }
}

// OpenBLAS's thread count is part of the kernel class: another count may
// round differently, never by more than the cross-shape tolerance, and the
// result records the count it ran with.
TEST(BlockQuantizerTest, BlasThreadsChangeOnlyRoundingAndAreRecorded) {
  const Fixture f = MakeFixture(2);
  const int threads = openblas_get_num_threads();
  std::vector<float> one_out, two_out;
  SetCpuThreads(1);
  const BlockResult one =
      Quantize(f, Recipe(QuantMethod::kRtn, 4, 64), one_out);
  SetCpuThreads(2);
  const BlockResult two =
      Quantize(f, Recipe(QuantMethod::kRtn, 4, 64), two_out);
  SetCpuThreads(threads);
  EXPECT_EQ(one.backend, "cpu");
  EXPECT_NE(one.kernel.find(", 1 thread"), std::string::npos) << one.kernel;
  EXPECT_NE(two.kernel.find(", 2 threads"), std::string::npos) << two.kernel;
  EXPECT_LT(MaxDeviation(one_out, two_out), kCrossShapeTolerance);
}

// A linear the output cannot hold stays in floating point (rounded to its
// stored dtype); the others are quantized around it, and the block
// computes with it as stored.
TEST(BlockQuantizerTest, KeptLinearsStayAsStored) {
  const Fixture f = MakeFixture(2);
  for (QuantMethod method :
       {QuantMethod::kRtn, QuantMethod::kGptq, QuantMethod::kAwq}) {
    BlockRecipe recipe = Recipe(method, 4, 64);
    recipe.keep_fp[kDownProj] = KeptLinear{"no room", SafetensorsDType::kBF16};
    std::vector<float> out;
    const BlockResult r = Quantize(f, recipe, out);
    const std::string what(QuantMethodName(method));
    EXPECT_EQ(r.reports[kDownProj].kept_fp, "no room") << what;
    EXPECT_EQ(r.quantized[kDownProj].rows, 0) << what;
    EXPECT_EQ(r.reports[kDownProj].relative_output_error, 0) << what;
    EXPECT_GT(r.reports[kDownProj - 1].relative_output_error, 0) << what;
    if (method != QuantMethod::kAwq) {  // AWQ scales it with up's outputs.
      EXPECT_EQ(BlockLinear(r.weights, kDownProj).weight, f.block.down.weight)
          << what;
    } else {
      EXPECT_EQ(r.awq_ratios.size(), 2u);  // q/k/v and gate/up searched.
    }
    ExpectForwardOf(f, r.weights, 4, 2, out, what);
  }
}

TEST(BlockQuantizerTest, GptqBeatsRtnOnEveryLinear) {
  const Fixture f = MakeFixture(2);
  for (bool true_sequential : {true, false}) {
    for (bool desc_act : {false, true}) {
      std::vector<float> rtn_out, gptq_out;
      const BlockResult rtn =
          Quantize(f, Recipe(QuantMethod::kRtn, 3, 64), rtn_out);
      BlockRecipe recipe = Recipe(QuantMethod::kGptq, 3, 64);
      recipe.true_sequential = true_sequential;
      recipe.gptq.desc_act = desc_act;
      const BlockResult gptq = Quantize(f, recipe, gptq_out);
      for (int i = 0; i < kBlockLinears; ++i) {
        EXPECT_LT(gptq.reports[i].proxy_loss, rtn.reports[i].proxy_loss)
            << kBlockLinearNames[i] << " sequential " << true_sequential
            << " act-order " << desc_act;
      }
      std::vector<float> fp = f.hidden;
      const LlamaForward forward(f.spec, f.seq_len);
      ASSERT_TRUE(ForwardBlockInPasses(forward, f.block, f.sequences, f.seq_len,
                                       6, fp.data())
                      .ok());
      EXPECT_LT(RelativeDifference(gptq_out, fp),
                RelativeDifference(rtn_out, fp));
    }
  }
}

TEST(BlockQuantizerTest, AwqFoldsExactlyAndScalesVIntoOWithoutGqa) {
  // Without GQA, v -> o is a scaled pair: four groups searched. At 8 bits the
  // quantization error is small, so the block must compute nearly what the
  // FP block computes, as RTN does: the folding into the norms and v / up is
  // exact (a wrong fold errs by tens of percent).
  const Fixture f = MakeFixture(4);
  std::vector<float> out;
  BlockRecipe recipe = Recipe(QuantMethod::kAwq, 8, 64);
  recipe.awq.clip = false;
  const BlockResult r = Quantize(f, recipe, out);
  EXPECT_EQ(r.awq_ratios.size(), 4u);
  std::vector<float> fp = f.hidden;
  const LlamaForward forward(f.spec, f.seq_len);
  ASSERT_TRUE(ForwardBlockInPasses(forward, f.block, f.sequences, f.seq_len, 6,
                                   fp.data())
                  .ok());
  std::vector<float> rtn_out;
  Quantize(f, Recipe(QuantMethod::kRtn, 8, 64), rtn_out);
  EXPECT_LT(RelativeDifference(out, fp), 2 * RelativeDifference(rtn_out, fp));
  EXPECT_NE(r.weights.attn_norm, f.block.attn_norm);  // Scales were folded.
  // With GQA the v -> o pair is skipped.
  const Fixture gqa = MakeFixture(2);
  EXPECT_EQ(Quantize(gqa, recipe, out).awq_ratios.size(), 3u);
}

TEST(BlockQuantizerTest, AwqScalesLinearsOfDifferentFormatsTogether) {
  // As a GGUF mix asks: v in 6 bits beside q and k in 4.
  const Fixture f = MakeFixture(2);
  BlockRecipe recipe = Recipe(QuantMethod::kAwq, 4, 32);
  recipe.formats[2] = {6, 16, true};
  std::vector<float> out;
  const BlockResult r = Quantize(f, recipe, out);
  EXPECT_EQ(r.quantized[2].bits, 6);
  EXPECT_EQ(r.quantized[0].bits, 4);
  EXPECT_LT(r.reports[2].relative_output_error,
            r.reports[1].relative_output_error);
}

// A sharded recipe is its pieces composed: a data-parallel job running
// CaptureStageStatistics per shard on several workers, MergeStatistics in
// shard order and SolveStage on one gets QuantizeBlock's bits; against
// one shard only the order of the Hessians' sums differs.
TEST(BlockQuantizerTest, ShardedCalibrationIsItsPiecesComposed) {
  const Fixture f = MakeFixture(2);
  for (QuantMethod method : {QuantMethod::kGptq, QuantMethod::kRtn}) {
    BlockRecipe recipe = Recipe(method, 4, 64);
    recipe.sequences_per_pass = 2;  // 3 passes over 6 sequences.
    recipe.calibration_shards = 3;
    std::vector<float> out;
    const BlockResult whole = Quantize(f, recipe, out);

    const LlamaForward forward(f.spec, f.seq_len);
    absl::StatusOr<BlockResult> partial =
        StartBlockResult(f.block, recipe, f.sequences, f.seq_len);
    ASSERT_TRUE(partial.ok()) << partial.status();
    const int64_t dim = f.spec.hidden_size;
    const int stages = static_cast<int>(CalibrationStages(recipe).size());
    EXPECT_EQ(stages, method == QuantMethod::kGptq ? 4 : 1);
    for (int stage = 0; stage < stages; ++stage) {
      for (int i = 0; i < kBlockLinears; ++i) {
        EXPECT_EQ(LinearSolved(*partial, i),
                  stage > 0 && i < (stage == 1   ? 3
                                    : stage == 2 ? 4
                                                 : 6));
      }
      // Shards in reverse: only the merge order matters.
      std::vector<BlockStatistics> shards(3);
      for (int k = 2; k >= 0; --k) {
        const absl::StatusOr<SequenceRange> range =
            CalibrationShard(f.sequences, 2, 3, k);
        ASSERT_TRUE(range.ok()) << range.status();
        EXPECT_EQ(range->first, 2 * k);
        EXPECT_EQ(range->count, 2);
        absl::StatusOr<BlockStatistics> statistics = CaptureStageStatistics(
            forward, partial->weights, recipe, stage, range->count, f.seq_len,
            f.hidden.data() + range->first * f.seq_len * dim);
        ASSERT_TRUE(statistics.ok()) << statistics.status();
        shards[k] = *std::move(statistics);
      }
      BlockStatistics total = std::move(shards[0]);
      for (int k = 1; k < 3; ++k) {
        ASSERT_TRUE(MergeStatistics(shards[k], total).ok());
      }
      ASSERT_TRUE(SolveStage(recipe, stage, total, *partial).ok());
    }
    for (int i = 0; i < kBlockLinears; ++i) {
      EXPECT_TRUE(LinearSolved(*partial, i));
      EXPECT_EQ(partial->quantized[i].q, whole.quantized[i].q)
          << kBlockLinearNames[i];
      EXPECT_EQ(partial->quantized[i].scales, whole.quantized[i].scales);
      EXPECT_EQ(partial->importance[i], whole.importance[i]);
      EXPECT_EQ(partial->reports[i].proxy_loss, whole.reports[i].proxy_loss);
    }
    std::vector<float> composed = f.hidden;
    ASSERT_TRUE(ForwardBlockInPasses(forward, partial->weights, f.sequences,
                                     f.seq_len, 2, composed.data())
                    .ok());
    EXPECT_EQ(composed, out);

    // One shard: the same sums in another order.
    recipe.calibration_shards = 1;
    std::vector<float> unsharded_out;
    const BlockResult unsharded = Quantize(f, recipe, unsharded_out);
    for (int i = 0; i < kBlockLinears; ++i) {
      const std::vector<uint8_t>& a = unsharded.quantized[i].q;
      const std::vector<uint8_t>& b = whole.quantized[i].q;
      ASSERT_EQ(a.size(), b.size());
      size_t same = 0;
      for (size_t j = 0; j < a.size(); ++j) same += a[j] == b[j];
      EXPECT_GE(same, a.size() * 99 / 100) << kBlockLinearNames[i];
      EXPECT_NEAR(unsharded.reports[i].proxy_loss, whole.reports[i].proxy_loss,
                  1e-3 * whole.reports[i].proxy_loss);
    }
  }
}

TEST(BlockQuantizerTest, ShardsAreWholePassesAndNotForAwq) {
  const absl::StatusOr<SequenceRange> last = CalibrationShard(6, 4, 2, 1);
  ASSERT_TRUE(last.ok());
  EXPECT_EQ(last->first, 4);
  EXPECT_EQ(last->count, 2);  // The short pass.
  EXPECT_EQ(CalibrationShard(6, 4, 3, 0).status().code(),
            absl::StatusCode::kInvalidArgument);  // 2 passes.
  EXPECT_EQ(CalibrationShard(6, 4, 2, 2).status().code(),
            absl::StatusCode::kInvalidArgument);
  const Fixture f = MakeFixture(2);
  BlockRecipe awq = Recipe(QuantMethod::kAwq, 4, 64);
  awq.calibration_shards = 2;
  EXPECT_TRUE(CalibrationStages(awq).empty());
  const absl::Status refused =
      StartBlockResult(f.block, awq, f.sequences, f.seq_len).status();
  EXPECT_EQ(refused.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(refused.message().find("AWQ"), std::string::npos) << refused;
  // Statistics that do not fit the stage's linears (a worker's upload):
  // refused by name, for RTN as for GPTQ.
  for (QuantMethod method : {QuantMethod::kRtn, QuantMethod::kGptq}) {
    const BlockRecipe recipe = Recipe(method, 4, 64);
    absl::StatusOr<BlockResult> partial =
        StartBlockResult(f.block, recipe, f.sequences, f.seq_len);
    ASSERT_TRUE(partial.ok());
    BlockStatistics wrong;
    wrong[static_cast<int>(LinearInput(0))].emplace(f.spec.hidden_size + 1);
    const absl::Status solved = SolveStage(recipe, 0, wrong, *partial);
    EXPECT_EQ(solved.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(solved.message().find("self_attn.q_proj: statistics of"),
              std::string::npos)
        << solved;
  }
}

TEST(BlockQuantizerTest, DataFreeRtnAndBadInput) {
  const Fixture f = MakeFixture(2);
  const LlamaForward forward(f.spec, f.seq_len);
  const auto rtn = QuantizeBlock(
      forward, f.block, Recipe(QuantMethod::kRtn, 4, 128), 0, 0, nullptr);
  ASSERT_TRUE(rtn.ok()) << rtn.status();
  EXPECT_TRUE(std::isnan(rtn->reports[0].proxy_loss));
  EXPECT_TRUE(rtn->importance[0].empty());
  const auto gptq = QuantizeBlock(
      forward, f.block, Recipe(QuantMethod::kGptq, 4, 128), 0, 0, nullptr);
  EXPECT_EQ(gptq.status().code(), absl::StatusCode::kInvalidArgument);
  std::vector<float> hidden = f.hidden;
  const auto bad =
      QuantizeBlock(forward, f.block, Recipe(QuantMethod::kGptq, 9, 100),
                    f.sequences, f.seq_len, hidden.data());
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseQuantMethod("GPTQ").value(), QuantMethod::kGptq);
  EXPECT_FALSE(ParseQuantMethod("squeezellm").ok());
}

}  // namespace
}  // namespace quant
