#include "quant/awq.h"

#include <cmath>
#include <random>
#include <vector>

#include "gtest/gtest.h"

namespace quant {
namespace {

LinearWeights RandomLinear(int64_t rows, int64_t cols, std::mt19937& rng) {
  std::normal_distribution<float> normal(0.0f, 0.05f);
  LinearWeights linear;
  linear.rows = rows, linear.cols = cols;
  linear.weight.resize(rows * cols);
  for (float& w : linear.weight) w = normal(rng);
  return linear;
}

// Inputs with a few channels 30x larger than the rest, as LLM activations.
std::vector<float> OutlierInputs(int64_t tokens, int64_t cols,
                                 std::mt19937& rng) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> x(tokens * cols);
  for (int64_t t = 0; t < tokens; ++t) {
    for (int64_t c = 0; c < cols; ++c) {
      x[t * cols + c] = normal(rng) * (c % 17 == 3 ? 30.0f : 1.0f);
    }
  }
  return x;
}

double OutputError(const LinearWeights& reference, const LinearWeights& other,
                   const std::vector<float>& x, int64_t tokens) {
  std::vector<float> a(tokens * reference.rows), b(a.size());
  ApplyLinear(reference, x.data(), tokens, a.data());
  ApplyLinear(other, x.data(), tokens, b.data());
  double total = 0;
  for (size_t i = 0; i < a.size(); ++i) total += (a[i] - b[i]) * (a[i] - b[i]);
  return total / a.size();
}

TEST(AwqQuantizeTest, FollowsAutoAwqsMinMaxRule) {
  // One group of four, 2 bits, zero point: scale (2 - -1) / 3 = 1, zero
  // -round(-1 / 1) = 1, levels round(w) + 1 (0.5 rounds to even).
  const float w[] = {-1.0f, 0.0f, 0.5f, 2.0f};
  const auto q = AwqQuantize(w, 1, 4, 2, -1, /*zero_point=*/true);
  ASSERT_TRUE(q.ok()) << q.status();
  EXPECT_EQ(q->scales[0], 1.0f);
  EXPECT_EQ(q->zeros[0], 1);
  EXPECT_EQ(q->q, (std::vector<uint8_t>{0, 1, 1, 3}));
  // Symmetric: scale max|w| / (2^(bits-1) - 1) = 2 / 1, zero 2, levels in
  // [0, 3] = round(w / 2) + 2 (-0.5 rounds to even, 0).
  const auto s = AwqQuantize(w, 1, 4, 2, -1, /*zero_point=*/false);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->scales[0], 2.0f);
  EXPECT_EQ(s->zeros[0], 2);
  EXPECT_EQ(s->q, (std::vector<uint8_t>{2, 2, 2, 3}));
  // A group without negative values still gets zero point 1.
  const float positive[] = {0.0f, 1.0f, 2.0f, 3.0f};
  const auto p = AwqQuantize(positive, 1, 4, 2, -1, true);
  EXPECT_EQ(p->zeros[0], 1);
  EXPECT_EQ(p->q, (std::vector<uint8_t>{1, 2, 3, 3}));
  // Groups must tile the row.
  EXPECT_EQ(AwqQuantize(w, 1, 4, 4, 3, true).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(AwqQuantize(w, 1, 4, 9, 2, true).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(AwqScaleSearchTest, ProtectsSalientChannelsAndNeverLosesToNoScaling) {
  std::mt19937 rng(3);
  const int64_t cols = 128, tokens = 256;
  const LinearWeights a = RandomLinear(64, cols, rng);
  const LinearWeights b = RandomLinear(32, cols, rng);
  const std::vector<float> x = OutlierInputs(tokens, cols, rng);
  std::vector<double> x_mean(cols, 0.0);
  for (int64_t t = 0; t < tokens; ++t) {
    for (int64_t c = 0; c < cols; ++c) x_mean[c] += std::fabs(x[t * cols + c]);
  }
  for (double& m : x_mean) m /= tokens;
  const AwqLossFn loss = [&](const std::vector<LinearWeights>& replaced)
      -> absl::StatusOr<double> {
    return OutputError(a, replaced[0], x, tokens) +
           OutputError(b, replaced[1], x, tokens);
  };
  const auto found = SearchAwqScales({&a, &b}, {{3, 32, false}, {3, 32, false}},
                                     x_mean, AwqOptions(), loss);
  ASSERT_TRUE(found.ok()) << found.status();
  EXPECT_GT(found->ratio, 0.0);
  EXPECT_LT(found->loss, 0.8 * found->loss_unscaled);
  // Salient channels get the larger scales.
  EXPECT_GT(found->scales[3], found->scales[4]);
  EXPECT_EQ(SearchAwqScales({&a, &b}, {{3, 32, false}, {3, 32, false}},
                            std::vector<double>(5, 1.0), AwqOptions(), loss)
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(AwqFoldTest, ScalingIsAnExactReparametrization) {
  std::mt19937 rng(5);
  LinearWeights producer = RandomLinear(48, 40, rng);
  producer.bias.assign(48, 0.25f);
  LinearWeights reader = RandomLinear(24, 48, rng);
  std::vector<float> s(48);
  for (size_t i = 0; i < s.size(); ++i) s[i] = 0.5f + 0.1f * i;
  const std::vector<float> x = OutlierInputs(7, 40, rng);
  auto chain = [&](const LinearWeights& p, const LinearWeights& r) {
    std::vector<float> mid(7 * 48), out(7 * 24);
    ApplyLinear(p, x.data(), 7, mid.data());
    ApplyLinear(r, mid.data(), 7, out.data());
    return out;
  };
  const std::vector<float> before = chain(producer, reader);
  DivideOutputRows(s, producer);
  ScaleInputColumns(s, reader);
  const std::vector<float> after = chain(producer, reader);
  for (size_t i = 0; i < before.size(); ++i) {
    EXPECT_NEAR(after[i], before[i], 1e-4 * (1 + std::fabs(before[i])));
  }
}

TEST(AwqClipTest, ClippingLowersTheOutputErrorOfOutlierWeights) {
  std::mt19937 rng(9);
  const int64_t cols = 128, tokens = 600;
  LinearWeights linear = RandomLinear(16, cols, rng);
  for (int64_t r = 0; r < 16; ++r)
    linear.weight[r * cols + 5] = 0.6f;  // Outliers.
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> x(tokens * cols);
  for (float& v : x) v = normal(rng);
  for (int64_t t = 0; t < tokens; ++t)
    x[t * cols + 5] *= 0.01f;  // Quiet channel.
  const LinearWeights original = linear;
  auto quantized_error = [&](const LinearWeights& w) {
    LinearWeights q = w;
    q.weight =
        AwqQuantize(w.weight.data(), w.rows, cols, 3, 64, true)->Dequantize();
    return OutputError(original, q, x, tokens);
  };
  AwqOptions options;
  ASSERT_TRUE(ClipAwq(x.data(), tokens, {3, 64, false}, options, linear).ok());
  EXPECT_LT(quantized_error(linear), 0.9 * quantized_error(original));
  for (size_t i = 0; i < linear.weight.size(); ++i) {
    EXPECT_LE(std::fabs(linear.weight[i]),
              std::fabs(original.weight[i]) + 1e-7);
  }
}

}  // namespace
}  // namespace quant
