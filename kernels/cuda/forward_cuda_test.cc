// The GPU block forward against the CPU forward (model/llama_forward.h) on a
// random block of odd sizes with grouped-query attention, q/k/v/o biases and
// llama3 rotary scaling; weights are BF16 values, so the backends differ only
// in the BF16 rounding of the products' inputs. Skips without a GPU.
#include "kernels/cuda/forward_cuda.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cuda/gpu_test_support.h"
#include "kernels/cuda/hessian_cuda.h"
#include "kernels/cuda/random_block.h"
#include "quant/hessian.h"

namespace quant::cuda {
namespace {

ModelSpec OddSpec() {
  ModelSpec spec;
  spec.hidden_size = 96;
  spec.intermediate_size = 200;
  spec.num_layers = 1;
  spec.num_heads = 6;
  spec.num_kv_heads = 2;
  spec.head_dim = 16;
  spec.vocab_size = 10;
  spec.rms_norm_eps = 1e-5;
  spec.rope_theta = 500000;
  spec.rope_scaling.type = "llama3";
  spec.rope_scaling.factor = 8;
  spec.rope_scaling.original_max_position_embeddings = 16;
  spec.attention_bias = true;
  return spec;
}

DeviceBuffer Upload(const CudaContext& context, const std::vector<float>& x) {
  absl::StatusOr<DeviceBuffer> d =
      DeviceBuffer::Allocate(context, x.size() * 4, "test data");
  EXPECT_TRUE(d.ok()) << d.status();
  EXPECT_TRUE(
      CopyToDevice(context, d->as<void>(), x.data(), x.size() * 4, "test")
          .ok());
  return std::move(*d);
}

std::vector<float> Download(const CudaContext& context, const float* d,
                            int64_t n) {
  std::vector<float> x(static_cast<size_t>(n));
  EXPECT_TRUE(CopyToHost(context, x.data(), d, n * 4, "test").ok());
  return x;
}

double MaxAbs(const std::vector<float>& x) {
  double m = 0;
  for (float v : x) m = std::max(m, double{std::fabs(v)});
  return m;
}

TEST(ForwardCudaTest, MatchesTheCpuForwardAndItsLinearInputs) {
  std::unique_ptr<CudaContext> context = OpenGpu();
  REQUIRE_GPU(context);
  const ModelSpec spec = OddSpec();
  const int64_t sequences = 3, seq_len = 37;
  const int64_t n = sequences * seq_len;
  const DecoderBlockWeights block =
      RandomBf16Block(spec, 5, /*attention_biases=*/true);
  std::mt19937 rng(9);
  std::vector<float> hidden = RandomBf16Values(rng, n * spec.hidden_size, 1.0f);

  const LlamaForward cpu(spec, seq_len);
  std::vector<float> want = hidden;
  std::map<BlockInput, HessianAccumulator> cpu_h;
  ASSERT_TRUE(cpu.ForwardBlock(block, sequences, seq_len, want.data(),
                               [&](BlockInput input, const float* x,
                                   int64_t tokens, int64_t width) {
                                 cpu_h.emplace(input, HessianAccumulator(width))
                                     .first->second.Add(x, tokens);
                                 return true;
                               })
                  .ok());

  absl::StatusOr<std::unique_ptr<CudaForward>> gpu =
      CudaForward::Create(*context, cpu);
  ASSERT_TRUE(gpu.ok()) << gpu.status();
  absl::StatusOr<DeviceBlockWeights> weights = UploadBlock(*context, block);
  ASSERT_TRUE(weights.ok()) << weights.status();
  DeviceBuffer h = Upload(*context, hidden);
  std::map<BlockInput, DeviceHessian> gpu_h;
  absl::Status status = (*gpu)->ForwardBlock(
      *weights, sequences, seq_len, h.as<float>(),
      [&](BlockInput input, const uint16_t* x, int64_t tokens,
          int64_t width) -> absl::StatusOr<bool> {
        auto it = gpu_h.find(input);
        if (it == gpu_h.end()) {
          absl::StatusOr<DeviceHessian> created =
              DeviceHessian::Create(*context, width);
          if (!created.ok()) return created.status();
          it = gpu_h.emplace(input, std::move(*created)).first;
        }
        absl::Status added = it->second.AddBf16(x, tokens);
        if (!added.ok()) return added;
        return true;
      });
  ASSERT_TRUE(status.ok()) << status;
  const std::vector<float> got =
      Download(*context, h.as<float>(), n * spec.hidden_size);

  // BF16 inputs to the products: agreement to a few parts in a thousand of
  // the largest activation.
  const double scale = MaxAbs(want);
  double worst = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    worst = std::max(worst, double{std::fabs(got[i] - want[i])});
  }
  EXPECT_LT(worst, 5e-3 * scale) << "largest activation " << scale;
  std::printf("block output: max |gpu - cpu| = %.3g of %.3g\n", worst, scale);

  ASSERT_EQ(gpu_h.size(), 4u);
  for (auto& [input, accumulator] : cpu_h) {
    const std::vector<double> a = accumulator.Hessian();
    absl::StatusOr<std::vector<double>> b = gpu_h.at(input).HessianOnHost();
    ASSERT_TRUE(b.ok()) << b.status();
    double diff = 0, norm = 0;
    for (size_t i = 0; i < a.size(); ++i) {
      diff += ((*b)[i] - a[i]) * ((*b)[i] - a[i]);
      norm += a[i] * a[i];
    }
    const double relative = std::sqrt(diff / norm);
    EXPECT_LT(relative, 1e-2) << "input " << static_cast<int>(input);
    std::printf("Hessian of input %d: relative difference %.3g\n",
                static_cast<int>(input), relative);
  }
}

TEST(ForwardCudaTest, AnObserverEndsThePassAndBadShapesAreRefused) {
  std::unique_ptr<CudaContext> context = OpenGpu();
  REQUIRE_GPU(context);
  const ModelSpec spec = OddSpec();
  const DecoderBlockWeights block =
      RandomBf16Block(spec, 6, /*attention_biases=*/true);
  const LlamaForward cpu(spec, 8);
  absl::StatusOr<std::unique_ptr<CudaForward>> gpu =
      CudaForward::Create(*context, cpu);
  ASSERT_TRUE(gpu.ok()) << gpu.status();
  absl::StatusOr<DeviceBlockWeights> weights = UploadBlock(*context, block);
  ASSERT_TRUE(weights.ok()) << weights.status();
  std::mt19937 rng(2);
  const std::vector<float> hidden = RandomBf16Values(rng, 2 * 8 * 96, 1.0f);
  DeviceBuffer h = Upload(*context, hidden);
  std::vector<BlockInput> seen;
  ASSERT_TRUE((*gpu)
                  ->ForwardBlock(*weights, 2, 8, h.as<float>(),
                                 [&](BlockInput input, const uint16_t*, int64_t,
                                     int64_t) -> absl::StatusOr<bool> {
                                   seen.push_back(input);
                                   return input != BlockInput::kAttention;
                                 })
                  .ok());
  EXPECT_EQ(seen, std::vector<BlockInput>{BlockInput::kAttention});
  EXPECT_EQ(Download(*context, h.as<float>(), 2 * 8 * 96), hidden);
  // An observer's error ends the pass with that error.
  EXPECT_EQ((*gpu)
                ->ForwardBlock(*weights, 2, 8, h.as<float>(),
                               [](BlockInput, const uint16_t*, int64_t,
                                  int64_t) -> absl::StatusOr<bool> {
                                 return absl::ResourceExhaustedError("full");
                               })
                .code(),
            absl::StatusCode::kResourceExhausted);
  // Longer sequences than the rotary tables hold.
  EXPECT_EQ((*gpu)->ForwardBlock(*weights, 1, 9, h.as<float>()).code(),
            absl::StatusCode::kInvalidArgument);
  DeviceBlockWeights wrong = std::move(*weights);
  wrong.o.rows = 95;
  EXPECT_EQ((*gpu)->ForwardBlock(wrong, 2, 8, h.as<float>()).code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace quant::cuda
