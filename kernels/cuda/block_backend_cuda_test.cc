// The whole block task on the GPU against the CPU engine (the oracle) on
// random blocks of odd sizes: quantized levels at least 99% identical and
// each linear's proxy loss within 0.5% (the numerics contract), the
// block's outputs close, and two GPU runs byte-identical; for RTN, GPTQ (also
// on GGUF grids) and AWQ. The oracle rounds the products' inputs to BF16
// where the GPU does (ProductPrecision::kBfloat16): GPTQ feeds each
// column's rounding error into the next, so a solve on FP32 inputs is an
// equally good but different solution (measured on these blocks: 18 to 98%
// of levels equal, losses within 0.5%). Skips without a GPU.
#include "kernels/cuda/block_backend_cuda.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cuda/gpu_test_support.h"
#include "kernels/cuda/random_block.h"

namespace quant::cuda {
namespace {

std::unique_ptr<CudaBlockBackend> OpenGpuBackend() {
  absl::StatusOr<std::unique_ptr<CudaBlockBackend>> backend =
      CudaBlockBackend::Create(0);
  return backend.ok() ? std::move(*backend) : nullptr;
}

ModelSpec Spec(int64_t hidden, int64_t intermediate, int64_t heads,
               int64_t kv_heads) {
  ModelSpec spec;
  spec.hidden_size = hidden;
  spec.intermediate_size = intermediate;
  spec.num_layers = 1;
  spec.num_heads = heads;
  spec.num_kv_heads = kv_heads;
  spec.head_dim = hidden / heads;
  spec.vocab_size = 10;
  spec.rms_norm_eps = 1e-5;
  spec.rope_theta = 10000;
  return spec;
}

BlockRecipe Recipe(QuantMethod method, int bits, int group_size) {
  BlockRecipe recipe;
  recipe.method = method;
  for (WeightFormat& format : recipe.formats) {
    format.bits = bits, format.group_size = group_size, format.sym = false;
  }
  recipe.sequences_per_pass = 3;  // Several passes, the last one short.
  return recipe;
}

struct Case {
  ModelSpec spec;
  DecoderBlockWeights block;
  std::vector<float> hidden;
  // More tokens than the widest input has columns (as real calibration
  // has): with fewer, the Hessians are singular but for the dampening and
  // GPTQ's solution turns on the rounding of the inputs (BF16 here, FP32
  // on the CPU).
  int64_t sequences = 40, seq_len = 33;
};

Case MakeCase(const ModelSpec& spec, uint32_t seed) {
  Case c;
  c.spec = spec;
  c.block = RandomBf16Block(spec, seed, /*attention_biases=*/false);
  std::mt19937 rng(seed + 1);
  c.hidden =
      RandomBf16Values(rng, c.sequences * c.seq_len * spec.hidden_size, 1.0f);
  return c;
}

struct BlockRun {
  BlockResult result;
  std::vector<float> hidden;
};

// The GPU backend reads only the spec and the rotary tables of `forward`;
// the CPU computes in its precision.
BlockRun Quantize(BlockBackend& backend, const Case& c,
                  const BlockRecipe& recipe) {
  const LlamaForward forward(c.spec, c.seq_len, ProductPrecision::kBfloat16);
  BlockRun run;
  run.hidden = c.hidden;
  absl::StatusOr<BlockResult> result = backend.QuantizeBlock(
      forward, c.block, recipe, c.sequences, c.seq_len, run.hidden.data());
  EXPECT_TRUE(result.ok()) << result.status();
  if (result.ok()) run.result = *std::move(result);
  return run;
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

// Fraction of equal weights the two solutions compute with (levels and
// their group parameters, or GGUF codes, agreeing).
double SameFraction(const QuantizedLinear& a, const QuantizedLinear& b) {
  const std::vector<float> x = a.Dequantize(), y = b.Dequantize();
  if (x.size() != y.size() || x.empty()) return 0;
  size_t same = 0;
  for (size_t i = 0; i < x.size(); ++i) same += x[i] == y[i] ? 1 : 0;
  return static_cast<double>(same) / static_cast<double>(x.size());
}

// The CPU oracle's run of a case, and its runs on the same case with the
// calibration inputs nudged by 2^-13 of their value here and there: a
// perturbation of the size by which the GPU's block forward differs from
// the CPU's computing the same function (1.3e-4, ForwardTasksAndRefusals:
// FP32 summation orders, and the BF16 roundings of the products' inputs
// that they tip).
struct Oracle {
  BlockRun run;
  std::vector<BlockRun> nudged;
};

Oracle RunOracle(const Case& c, const BlockRecipe& recipe) {
  CpuBlockBackend cpu;
  Oracle oracle;
  oracle.run = Quantize(cpu, c, recipe);
  for (uint32_t seed : {1u, 2u}) {
    Case nudged = c;
    std::mt19937 rng(seed);
    for (float& x : nudged.hidden) {
      const int step = static_cast<int>(rng() % 3) - 1;
      x += step * std::ldexp(x, -13);
    }
    oracle.nudged.push_back(Quantize(cpu, nudged, recipe));
  }
  return oracle;
}

// The numerics contract: each linear's proxy loss within 0.5% of the
// CPU's, and its levels at least 99% the CPU's -- or, where the CPU itself
// keeps fewer of its levels under the nudges, as many as it keeps, less 5
// points. GPTQ feeds every column's rounding error into the next, and a
// linear's inputs carry the earlier stages' solutions, so a level decided by
// a near-tie changes the rest of its row and the stages after it: the CPU's
// own agreement under nudges the size of the GPU's differences is the bar
// no other summation order can beat (these blocks: first-stage linears
// 100%, later ones down to 35-80% with act-order and on k-quant grids, at
// equal loss). The block's outputs likewise: within 2% of the CPU's, or 1.5
// times the nudges' difference.
//
// `other_choice[i]`: linear i was scaled by another AWQ exponent than the
// CPU chose (see AwqBlockWithinTheContractOfTheCpu): its levels differ by
// construction and its loss is held to 2%.
void ExpectWithinContract(const BlockRun& gpu, const Oracle& oracle,
                          const char* label,
                          std::array<bool, kBlockLinears> other_choice = {}) {
  const BlockRun& cpu = oracle.run;
  for (int i = 0; i < kBlockLinears; ++i) {
    const LinearReport& g = gpu.result.reports[i];
    const LinearReport& c = cpu.result.reports[i];
    EXPECT_EQ(g.kept_fp, c.kept_fp);
    if (!c.kept_fp.empty()) continue;  // Not quantized: nothing to compare.
    const double same =
        SameFraction(gpu.result.quantized[i], cpu.result.quantized[i]);
    double cpu_self = 1;
    for (const BlockRun& nudged : oracle.nudged) {
      cpu_self = std::min(cpu_self, SameFraction(nudged.result.quantized[i],
                                                 cpu.result.quantized[i]));
    }
    const double loss = g.proxy_loss / c.proxy_loss - 1;
    std::printf(
        "%s %-17s same %.5f (cpu nudged %.5f)  loss gpu %.6g cpu %.6g "
        "(%+.3f%%)%s\n",
        label, g.name.c_str(), same, cpu_self, g.proxy_loss, c.proxy_loss,
        100 * loss, other_choice[i] ? " (other AWQ exponent)" : "");
    if (other_choice[i]) {
      EXPECT_LT(std::fabs(loss), 0.02) << label << " " << g.name;
      continue;
    }
    EXPECT_GE(same, std::min(0.99, cpu_self - 0.05)) << label << " " << g.name;
    EXPECT_LT(std::fabs(loss), 0.005) << label << " " << g.name;
    EXPECT_EQ(gpu.result.importance[i].size(), cpu.result.importance[i].size());
  }
  const double outputs = RelativeDifference(gpu.hidden, cpu.hidden);
  double cpu_self = 0;
  for (const BlockRun& nudged : oracle.nudged) {
    cpu_self =
        std::max(cpu_self, RelativeDifference(nudged.hidden, cpu.hidden));
  }
  std::printf("%s block outputs: relative difference %.3g (cpu nudged %.3g)\n",
              label, outputs, cpu_self);
  EXPECT_LT(outputs, std::max(0.02, 1.5 * cpu_self)) << label;
  EXPECT_EQ(gpu.result.backend, "cuda");
}

TEST(CudaBlockBackendTest, GptqBlockWithinTheContractOfTheCpu) {
  std::unique_ptr<CudaBlockBackend> gpu = OpenGpuBackend();
  REQUIRE_GPU(gpu);
  // Odd sizes: 6 heads of 32 over 2 KV heads, intermediate 320.
  const Case c = MakeCase(Spec(192, 320, 6, 2), 21);
  for (bool desc_act : {false, true}) {
    BlockRecipe recipe = Recipe(QuantMethod::kGptq, 4, 32);
    recipe.gptq.desc_act = desc_act;
    recipe.gptq.block_size = 48;
    const Oracle want = RunOracle(c, recipe);
    const BlockRun got = Quantize(*gpu, c, recipe);
    ExpectWithinContract(got, want, desc_act ? "gptq-act" : "gptq");
  }
}

TEST(CudaBlockBackendTest, RtnAndKeptLinearsMatchTheCpu) {
  std::unique_ptr<CudaBlockBackend> gpu = OpenGpuBackend();
  REQUIRE_GPU(gpu);
  const Case c = MakeCase(Spec(192, 320, 6, 2), 23);
  BlockRecipe recipe = Recipe(QuantMethod::kRtn, 3, 64);
  recipe.keep_fp[3] = KeptLinear{"kept for the test", SafetensorsDType::kBF16};
  const Oracle want = RunOracle(c, recipe);
  const BlockRun got = Quantize(*gpu, c, recipe);
  for (int i = 0; i < kBlockLinears; ++i) {
    if (i == 3) {
      EXPECT_EQ(got.result.reports[i].kept_fp, "kept for the test");
      continue;
    }
    // RTN reads only the weights: the same levels, bit for bit.
    EXPECT_EQ(got.result.quantized[i].q, want.run.result.quantized[i].q) << i;
    EXPECT_EQ(got.result.quantized[i].scales,
              want.run.result.quantized[i].scales);
  }
  ExpectWithinContract(got, want, "rtn");
}

TEST(CudaBlockBackendTest, GgufGridBlockWithinTheContract) {
  std::unique_ptr<CudaBlockBackend> gpu = OpenGpuBackend();
  REQUIRE_GPU(gpu);
  const Case c = MakeCase(Spec(256, 512, 4, 2), 25);
  BlockRecipe recipe = Recipe(QuantMethod::kGptq, 4, 32);
  for (int i = 0; i < kBlockLinears; ++i) {
    recipe.gguf_grid[i] = i == 6 ? GgmlType::kQ6_K : GgmlType::kQ4_K;
  }
  const Oracle want = RunOracle(c, recipe);
  const BlockRun got = Quantize(*gpu, c, recipe);
  ExpectWithinContract(got, want, "q4_k");
}

// AWQ picks each group's exponent as the least loss on a grid; where two
// candidates' losses differ by less than the BF16 forward's rounding, the
// GPU may take the neighbour of the CPU's choice. Blocks whose normed inputs
// have salient channels (as trained models' do) give the search a clear
// minimum: most groups agree, and a group that does not is held to the
// loss (its levels differ by construction).
void ExpectAwqWithinContract(const Case& c, const BlockRecipe& recipe,
                             const BlockRun& got, const Oracle& oracle,
                             const char* label) {
  const BlockRun& want = oracle.run;
  const std::vector<AwqGroup> groups = AwqGroups(c.block, recipe);
  ASSERT_EQ(got.result.awq_ratios.size(), groups.size());
  ASSERT_EQ(want.result.awq_ratios.size(), groups.size());
  std::array<bool, kBlockLinears> other_choice = {};
  size_t agree = 0;
  for (size_t g = 0; g < groups.size(); ++g) {
    const bool same = got.result.awq_ratios[g] == want.result.awq_ratios[g];
    std::printf("%s group %zu: exponent gpu %.2f cpu %.2f\n", label, g,
                got.result.awq_ratios[g], want.result.awq_ratios[g]);
    agree += same ? 1 : 0;
    for (int i : groups[g].linears) other_choice[i] = !same;
  }
  EXPECT_GE(2 * agree, groups.size()) << label;
  ExpectWithinContract(got, oracle, label, other_choice);
}

Case SalientCase(const ModelSpec& spec, uint32_t seed) {
  Case c = MakeCase(spec, seed);
  for (int64_t k = 0; k < spec.hidden_size; k += 37) {
    c.block.attn_norm[k] *= 8;
    c.block.ffn_norm[k] *= 8;
  }
  return c;
}

TEST(CudaBlockBackendTest, AwqBlockWithinTheContractOfTheCpu) {
  std::unique_ptr<CudaBlockBackend> gpu = OpenGpuBackend();
  REQUIRE_GPU(gpu);
  // Grouped-query attention (no o group) and full attention (o scaled with
  // v).
  for (const auto& [spec, label] :
       {std::make_pair(Spec(192, 320, 6, 2), "awq-gqa"),
        std::make_pair(Spec(160, 288, 5, 5), "awq-mha")}) {
    const Case c = SalientCase(spec, 31);
    BlockRecipe recipe = Recipe(QuantMethod::kAwq, 4, 32);
    recipe.awq.search_sequences = 4;  // Kept over two passes.
    recipe.awq.clip_sample_tokens = 256;
    const Oracle want = RunOracle(c, recipe);
    const BlockRun got = Quantize(*gpu, c, recipe);
    ExpectAwqWithinContract(c, recipe, got, want, label);
  }
  // FP inputs for the next block; a linear kept in BF16; symmetric down.
  const Case c = SalientCase(Spec(192, 320, 6, 2), 33);
  BlockRecipe recipe = Recipe(QuantMethod::kAwq, 3, 64);
  recipe.formats[6].sym = true;
  recipe.awq.fp_inputs = true;
  recipe.keep_fp[5] = KeptLinear{"kept for the test", SafetensorsDType::kBF16};
  const Oracle want = RunOracle(c, recipe);
  const BlockRun got = Quantize(*gpu, c, recipe);
  ExpectAwqWithinContract(c, recipe, got, want, "awq-fp-inputs");
  // The kept linear, scaled and rounded to BF16, is the CPU's where the
  // exponents are, but for a scale's last bits (its mean |x| from the GPU's
  // inputs) tipping a rounding: 99% identical, the rest one BF16 step off.
  if (got.result.awq_ratios == want.run.result.awq_ratios) {
    const std::vector<float>& a = got.result.weights.up.weight;
    const std::vector<float>& b = want.run.result.weights.up.weight;
    ASSERT_EQ(a.size(), b.size());
    size_t same = 0;
    for (size_t i = 0; i < a.size(); ++i) {
      same += a[i] == b[i] ? 1 : 0;
      EXPECT_LE(std::fabs(a[i] - b[i]),
                std::ldexp(std::max(std::fabs(a[i]), std::fabs(b[i])), -7))
          << "weight " << i;
    }
    std::printf("awq-fp-inputs kept up_proj: %.5f identical\n",
                static_cast<double>(same) / a.size());
    EXPECT_GE(same, 0.99 * a.size());
  }
}

// A sharded recipe runs as data-parallel calibration's pieces on the GPU
// (each shard's statistics captured on the device, merged on the host in
// shard order, each stage solved on the device): within the contract of
// the CPU engine's sharded block, for GPTQ and RTN.
TEST(CudaBlockBackendTest, ShardedBlockFromPiecesWithinTheContract) {
  std::unique_ptr<CudaBlockBackend> gpu = OpenGpuBackend();
  REQUIRE_GPU(gpu);
  const Case c = MakeCase(Spec(192, 320, 6, 2), 31);
  for (QuantMethod method : {QuantMethod::kGptq, QuantMethod::kRtn}) {
    BlockRecipe recipe = Recipe(method, 4, 32);
    recipe.calibration_shards = 4;  // 14 passes of 3 sequences.
    const Oracle want = RunOracle(c, recipe);
    const BlockRun got = Quantize(*gpu, c, recipe);
    ExpectWithinContract(
        got, want, method == QuantMethod::kGptq ? "gptq-shards" : "rtn-shards");
  }
}

// The pieces themselves: a shard's statistics near the CPU's (the forward's
// BF16 products and FP32 orders apart), counting its tokens; the stage's
// solve refuses what the CPU's refuses.
TEST(CudaBlockBackendTest, PiecesCaptureAndSolveAsTheCpus) {
  std::unique_ptr<CudaBlockBackend> gpu = OpenGpuBackend();
  REQUIRE_GPU(gpu);
  const Case c = MakeCase(Spec(192, 320, 6, 2), 33);
  const BlockRecipe recipe = Recipe(QuantMethod::kGptq, 4, 32);
  const LlamaForward forward(c.spec, c.seq_len, ProductPrecision::kBfloat16);
  const int64_t count = 9;
  const float* shard = c.hidden.data() + 6 * c.seq_len * c.spec.hidden_size;
  for (int stage = 0; stage < 4; ++stage) {
    absl::StatusOr<BlockStatistics> mine = gpu->CaptureStageStatistics(
        forward, c.block, recipe, stage, count, c.seq_len, shard);
    ASSERT_TRUE(mine.ok()) << mine.status();
    absl::StatusOr<BlockStatistics> cpu = CaptureStageStatistics(
        forward, c.block, recipe, stage, count, c.seq_len, shard);
    ASSERT_TRUE(cpu.ok()) << cpu.status();
    for (int input = 0; input < kBlockInputs; ++input) {
      ASSERT_EQ((*mine)[input].has_value(), (*cpu)[input].has_value());
      if (!(*cpu)[input]) continue;
      EXPECT_EQ((*mine)[input]->samples(), count * c.seq_len);
      const std::vector<double> a = (*mine)[input]->Hessian();
      const std::vector<double> b = (*cpu)[input]->Hessian();
      double num = 0, den = 0;
      for (size_t k = 0; k < a.size(); ++k) {
        num += (a[k] - b[k]) * (a[k] - b[k]);
        den += b[k] * b[k];
      }
      std::printf("stage %d input %d: Hessian relative difference %.3g\n",
                  stage, input, std::sqrt(num / den));
      EXPECT_LT(std::sqrt(num / den), 0.01) << stage << " " << input;
    }
  }
  EXPECT_EQ(gpu->CaptureStageStatistics(forward, c.block, recipe, 4, count,
                                        c.seq_len, shard)
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);

  absl::StatusOr<BlockResult> partial =
      StartBlockResult(c.block, recipe, c.sequences, c.seq_len);
  ASSERT_TRUE(partial.ok()) << partial.status();
  BlockStatistics wrong;
  wrong[0].emplace(7);  // q/k/v read hidden_size (192) columns.
  const absl::Status refused = gpu->SolveStage(recipe, 0, wrong, *partial);
  EXPECT_EQ(refused.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(refused.message().find("statistics of 7 columns for 192 inputs"),
            std::string::npos)
      << refused;
  EXPECT_EQ(gpu->SolveStage(recipe, 0, BlockStatistics(), *partial).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(partial->weights.q.weight, c.block.q.weight);  // Left as it was.
}

TEST(CudaBlockBackendTest, TwoRunsAreByteIdentical) {
  std::unique_ptr<CudaBlockBackend> gpu = OpenGpuBackend();
  REQUIRE_GPU(gpu);
  const Case c = MakeCase(Spec(192, 320, 6, 2), 27);
  BlockRecipe gptq = Recipe(QuantMethod::kGptq, 4, 32);
  gptq.gptq.desc_act = true;
  BlockRecipe sharded = Recipe(QuantMethod::kGptq, 4, 32);
  sharded.calibration_shards = 3;
  for (const BlockRecipe& recipe :
       {gptq, Recipe(QuantMethod::kAwq, 4, 32), sharded}) {
    const BlockRun a = Quantize(*gpu, c, recipe);
    const BlockRun b = Quantize(*gpu, c, recipe);
    ASSERT_EQ(a.hidden.size(), b.hidden.size());
    EXPECT_EQ(0, std::memcmp(a.hidden.data(), b.hidden.data(),
                             a.hidden.size() * sizeof(float)));
    EXPECT_EQ(a.result.awq_ratios, b.result.awq_ratios);
    for (int i = 0; i < kBlockLinears; ++i) {
      EXPECT_EQ(a.result.quantized[i].q, b.result.quantized[i].q) << i;
      EXPECT_EQ(a.result.quantized[i].scales, b.result.quantized[i].scales);
      EXPECT_EQ(a.result.reports[i].proxy_loss, b.result.reports[i].proxy_loss);
    }
  }
}

// A slot of several GPUs (a DeviceGroupBackend) computes a sharded block as
// one GPU does, byte for byte: every visible GPU (up to 8), or GPU 0 twice
// where there is one (two contexts, their shards at once).
TEST(CudaBlockBackendTest, DeviceGroupIsOneGpuByteForByte) {
  std::unique_ptr<CudaBlockBackend> gpu = OpenGpuBackend();
  REQUIRE_GPU(gpu);
  absl::StatusOr<std::vector<DeviceInfo>> visible = ListDevices();
  ASSERT_TRUE(visible.ok()) << visible.status();
  std::vector<int> devices;
  for (int d = 0; d < std::min<int>(visible->size(), 8); ++d) {
    devices.push_back(d);
  }
  if (devices.size() == 1) devices.push_back(0);
  std::vector<std::unique_ptr<BlockBackend>> members;
  for (int d : devices) {
    absl::StatusOr<std::unique_ptr<CudaBlockBackend>> member =
        CudaBlockBackend::Create(d);
    ASSERT_TRUE(member.ok()) << member.status();
    members.push_back(*std::move(member));
  }
  absl::StatusOr<std::unique_ptr<DeviceGroupBackend>> group =
      DeviceGroupBackend::Create(std::move(members));
  ASSERT_TRUE(group.ok()) << group.status();
  std::printf("group of %zu: %s\n", devices.size(),
              (*group)->kernel().kernel.c_str());
  const Case c = MakeCase(Spec(192, 320, 6, 2), 29);
  for (QuantMethod method : {QuantMethod::kGptq, QuantMethod::kRtn}) {
    BlockRecipe recipe = Recipe(method, 4, 32);
    recipe.calibration_shards = 5;  // Uneven over 2 or more GPUs.
    const BlockRun one = Quantize(*gpu, c, recipe);
    const BlockRun many = Quantize(**group, c, recipe);
    ASSERT_EQ(one.hidden.size(), many.hidden.size());
    EXPECT_EQ(0, std::memcmp(one.hidden.data(), many.hidden.data(),
                             one.hidden.size() * sizeof(float)));
    for (int i = 0; i < kBlockLinears; ++i) {
      EXPECT_EQ(one.result.quantized[i].q, many.result.quantized[i].q) << i;
      EXPECT_EQ(one.result.quantized[i].scales,
                many.result.quantized[i].scales);
      EXPECT_EQ(one.result.reports[i].proxy_loss,
                many.result.reports[i].proxy_loss);
    }
  }
}

TEST(CudaBlockBackendTest, ForwardTasksAndRefusals) {
  std::unique_ptr<CudaBlockBackend> gpu = OpenGpuBackend();
  REQUIRE_GPU(gpu);
  const Case c = MakeCase(Spec(192, 320, 6, 2), 29);
  const LlamaForward forward(c.spec, c.seq_len);
  const LlamaForward bf16(c.spec, c.seq_len, ProductPrecision::kBfloat16);
  std::vector<float> fp32_cpu = c.hidden, bf16_cpu = c.hidden, got = c.hidden;
  ASSERT_TRUE(ForwardBlockInPasses(forward, c.block, c.sequences, c.seq_len, 3,
                                   fp32_cpu.data())
                  .ok());
  ASSERT_TRUE(ForwardBlockInPasses(bf16, c.block, c.sequences, c.seq_len, 3,
                                   bf16_cpu.data())
                  .ok());
  ASSERT_TRUE(
      gpu->ForwardBlock(forward, c.block, c.sequences, c.seq_len, 3, got.data())
          .ok());
  // The CPU rounding where the GPU does computes the GPU's function (FP32
  // summation orders apart); in FP32 it is transformers' function.
  const double to_bf16 = RelativeDifference(got, bf16_cpu);
  const double to_fp32 = RelativeDifference(got, fp32_cpu);
  std::printf(
      "forward: relative difference to the CPU in BF16 %.3g, FP32 %.3g\n",
      to_bf16, to_fp32);
  EXPECT_LT(to_bf16, 1e-3);
  EXPECT_LT(to_bf16, to_fp32 / 4);
  EXPECT_LT(to_fp32, 0.01);

  // A calibrated method without data is refused as on the CPU.
  EXPECT_EQ(gpu->QuantizeBlock(forward, c.block,
                               Recipe(QuantMethod::kGptq, 4, 32), 0, 0, nullptr)
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(CudaBlockBackendTest, RegisteredAsCuda) {
  RegisterCudaBlockBackend();
  absl::StatusOr<std::unique_ptr<BlockBackend>> made =
      MakeBlockBackend("cuda", 0);
  if (!made.ok()) {
    EXPECT_EQ(made.status().code(), absl::StatusCode::kUnavailable)
        << made.status();
    GTEST_SKIP() << made.status().message();
  }
  EXPECT_EQ((*made)->kernel().backend, "cuda");
  EXPECT_GT((*made)->device_memory_bytes(), 0);
  // A device that is not there: Unavailable, naming it.
  absl::StatusOr<std::unique_ptr<BlockBackend>> missing =
      MakeBlockBackend("cuda", 97);
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kUnavailable);
}

}  // namespace
}  // namespace quant::cuda
