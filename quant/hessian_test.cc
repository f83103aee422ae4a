#include "quant/hessian.h"

#include <algorithm>
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace quant {
namespace {

using ::testing::HasSubstr;

std::vector<float> Inputs(int64_t n, int64_t columns, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal;
  std::vector<float> x(static_cast<size_t>(n * columns));
  for (int64_t t = 0; t < n; ++t) {
    const float shared = normal(rng);
    for (int64_t c = 0; c < columns; ++c) {
      x[t * columns + c] = (1.0f + c % 5) * normal(rng) + shared;
    }
  }
  return x;
}

// 2/N sum x x^T and mean |x| in float64, one product at a time: the oracle.
TEST(HessianTest, MatchesTheDirectSum) {
  const int64_t columns = 37, n = 301;
  const std::vector<float> x = Inputs(n, columns, 1);
  HessianAccumulator acc(columns);
  acc.Add(x.data(), 100);  // Uneven batches.
  acc.Add(x.data() + 100 * columns, 201);
  ASSERT_EQ(acc.samples(), n);
  const std::vector<double> h = acc.Hessian();
  const std::vector<double> mean = acc.MeanAbs();
  for (int64_t i = 0; i < columns; ++i) {
    double abs_sum = 0;
    for (int64_t t = 0; t < n; ++t) abs_sum += std::fabs(x[t * columns + i]);
    EXPECT_NEAR(mean[i], abs_sum / n, 1e-9 * abs_sum);
    for (int64_t j = 0; j < columns; ++j) {
      double want = 0;
      for (int64_t t = 0; t < n; ++t) {
        want += 2.0 * x[t * columns + i] * x[t * columns + j] / n;
      }
      ASSERT_NEAR(h[i * columns + j], want, 1e-5 * (1 + std::fabs(want)))
          << i << "," << j;
      ASSERT_EQ(h[i * columns + j], h[j * columns + i]);
    }
  }
}

// Shards accumulated apart and merged give the statistics of all samples.
TEST(HessianTest, MergingShardsEqualsOneRun) {
  const int64_t columns = 16;
  const std::vector<float> x = Inputs(90, columns, 2);
  HessianAccumulator whole(columns), first(columns), second(columns);
  whole.Add(x.data(), 40);
  whole.Add(x.data() + 40 * columns, 50);
  first.Add(x.data(), 40);
  second.Add(x.data() + 40 * columns, 50);
  ASSERT_TRUE(first.Merge(second).ok());
  EXPECT_EQ(first.samples(), 90);
  EXPECT_EQ(first.Hessian(), whole.Hessian());
  EXPECT_EQ(first.MeanAbs(), whole.MeanAbs());
}

// Sums of many row tiles, merged on every core: every element of the
// lower triangle is the exact sum of the two.
TEST(HessianTest, LargeMergeAddsEveryElement) {
  const int64_t columns = 2053;  // 33 tiles of 64 rows, the last short.
  std::vector<double> a(columns * columns), b(columns * columns);
  for (size_t i = 0; i < a.size(); ++i) {
    a[i] = 0.25 * static_cast<double>(i % 1021);
    b[i] = 1.5 + static_cast<double>(i % 997);
  }
  absl::StatusOr<HessianAccumulator> first =
      HessianAccumulator::FromSums(3, a, std::vector<double>(columns, 1.0));
  absl::StatusOr<HessianAccumulator> second =
      HessianAccumulator::FromSums(4, b, std::vector<double>(columns, 2.0));
  ASSERT_TRUE(first.ok() && second.ok());
  ASSERT_TRUE(first->Merge(*second).ok());
  EXPECT_EQ(first->samples(), 7);
  for (int64_t i = 0; i < columns; ++i) {
    for (int64_t j = 0; j <= i; ++j) {
      const int64_t k = i * columns + j;
      ASSERT_EQ(first->sum_xxt()[k], a[k] + b[k]) << i << " " << j;
    }
  }
  // The Hessian mirrors the merged lower triangle, tile edges included.
  const std::vector<double> h = first->Hessian();
  for (int64_t i : {0, 63, 64, 1000, 2052}) {
    for (int64_t j : {0, 63, 64, 999, 2052}) {
      const int64_t lower = std::max(i, j) * columns + std::min(i, j);
      ASSERT_EQ(h[i * columns + j], 2.0 / 7 * (a[lower] + b[lower]))
          << i << " " << j;
    }
  }
  EXPECT_EQ(first->sum_abs(), std::vector<double>(columns, 3.0));
}

TEST(HessianTest, EmptyAndMismatched) {
  HessianAccumulator acc(4);
  EXPECT_EQ(acc.Hessian(), std::vector<double>(16, 0.0));
  EXPECT_EQ(acc.MeanAbs(), std::vector<double>(4, 0.0));
  acc.Add(nullptr, 0);
  EXPECT_EQ(acc.samples(), 0);
  HessianAccumulator other(5);
  const absl::Status status = acc.Merge(other);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(status.message()),
              HasSubstr("cannot merge statistics of 5 columns into 4"));
}

// A shard's statistics, stored packed and added to zeros, are its sums
// exactly; added to another shard's, the merge.
TEST(HessianTest, PackedSumsAddExactly) {
  const int64_t columns = 9;
  const std::vector<float> x = Inputs(23, columns, 3);
  HessianAccumulator acc(columns), other(columns);
  acc.Add(x.data(), 13);
  other.Add(x.data() + 13 * columns, 10);
  auto packed = [&](const HessianAccumulator& a) {
    std::vector<double> lower;
    for (int64_t i = 0; i < columns; ++i) {
      for (int64_t j = 0; j <= i; ++j) {
        lower.push_back(a.sum_xxt()[i * columns + j]);
      }
    }
    return lower;
  };
  HessianAccumulator restored(columns);
  ASSERT_TRUE(restored
                  .AddPackedSums(acc.samples(), packed(acc).data(),
                                 acc.sum_abs().data())
                  .ok());
  EXPECT_EQ(restored.samples(), 13);
  EXPECT_EQ(restored.sum_xxt(), acc.sum_xxt());
  EXPECT_EQ(restored.sum_abs(), acc.sum_abs());
  ASSERT_TRUE(restored
                  .AddPackedSums(other.samples(), packed(other).data(),
                                 other.sum_abs().data())
                  .ok());
  ASSERT_TRUE(acc.Merge(other).ok());
  EXPECT_EQ(restored.Hessian(), acc.Hessian());
  EXPECT_EQ(restored.MeanAbs(), acc.MeanAbs());
  EXPECT_EQ(restored.AddPackedSums(-1, nullptr, nullptr).code(),
            absl::StatusCode::kInvalidArgument);
}

// Sums taken over (a device's) are the accumulator that made them; an upper
// triangle filled in (a device's full product) changes nothing computed.
TEST(HessianTest, FromSumsTakesSumsOver) {
  const int64_t columns = 7;
  const std::vector<float> x = Inputs(19, columns, 5);
  HessianAccumulator acc(columns);
  acc.Add(x.data(), 19);
  std::vector<double> full = acc.sum_xxt();
  for (int64_t i = 0; i < columns; ++i) {
    for (int64_t j = i + 1; j < columns; ++j) {
      full[i * columns + j] = full[j * columns + i];
    }
  }
  absl::StatusOr<HessianAccumulator> made =
      HessianAccumulator::FromSums(19, full, acc.sum_abs());
  ASSERT_TRUE(made.ok()) << made.status();
  EXPECT_EQ(made->columns(), columns);
  EXPECT_EQ(made->samples(), 19);
  EXPECT_EQ(made->Hessian(), acc.Hessian());
  EXPECT_EQ(made->MeanAbs(), acc.MeanAbs());
  ASSERT_TRUE(made->Merge(acc).ok());
  EXPECT_EQ(made->samples(), 38);

  EXPECT_THAT(
      HessianAccumulator::FromSums(19, std::vector<double>(48), acc.sum_abs())
          .status()
          .message(),
      HasSubstr("48 products for 7 columns"));
  EXPECT_EQ(
      HessianAccumulator::FromSums(-1, full, acc.sum_abs()).status().code(),
      absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace quant
