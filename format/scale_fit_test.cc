#include "format/scale_fit.h"

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "gtest/gtest.h"

namespace quant {
namespace {

// The exact optimum by enumerating every level assignment (tiny groups only).
// Affine: for each assignment, weighted least squares of (scale, offset) with
// scale >= 0 and, optionally, offset <= 0.
double BruteForceAffine(const std::vector<float>& x,
                        const std::vector<float>& w, int q_max,
                        bool nonpositive_offset) {
  const int n = static_cast<int>(x.size());
  std::vector<int> q(n, 0);
  double best = std::numeric_limits<double>::infinity();
  while (true) {
    double sw = 0, sq = 0, sqq = 0, sx = 0, sqx = 0;
    for (int i = 0; i < n; ++i) {
      sw += w[i], sq += w[i] * q[i], sqq += w[i] * q[i] * q[i];
      sx += w[i] * x[i], sqx += w[i] * q[i] * x[i];
    }
    // Candidates: unconstrained optimum, offset 0, scale 0 (offset = mean).
    std::vector<std::pair<double, double>> candidates;
    const double det = sw * sqq - sq * sq;
    if (det > 0) {
      candidates.push_back(
          {(sw * sqx - sq * sx) / det, (sqq * sx - sq * sqx) / det});
    }
    if (sqq > 0) candidates.push_back({sqx / sqq, 0.0});
    candidates.push_back(
        {0.0, nonpositive_offset ? std::min(0.0, sx / sw) : sx / sw});
    for (auto [a, b] : candidates) {
      if (a < 0 || (nonpositive_offset && b > 0)) continue;
      double e = 0;
      for (int i = 0; i < n; ++i) {
        const double d = a * q[i] + b - x[i];
        e += w[i] * d * d;
      }
      best = std::min(best, e);
    }
    int i = 0;
    while (i < n && ++q[i] > q_max) q[i++] = 0;
    if (i == n) break;
  }
  return best;
}

double BruteForceSymmetric(const std::vector<float>& x,
                           const std::vector<float>& w, int q_neg) {
  const int n = static_cast<int>(x.size());
  std::vector<int> q(n, -q_neg);
  double sxx = 0;
  for (int i = 0; i < n; ++i) sxx += w[i] * x[i] * x[i];
  double best = sxx;
  while (true) {
    double sqq = 0, sqx = 0;
    for (int i = 0; i < n; ++i)
      sqq += w[i] * q[i] * q[i], sqx += w[i] * q[i] * x[i];
    if (sqq > 0) best = std::min(best, sxx - sqx * sqx / sqq);
    int i = 0;
    while (i < n && ++q[i] > q_neg - 1) q[i++] = -q_neg;
    if (i == n) break;
  }
  return best;
}

// sum_i w_i * (scale * q_i + offset - x_i)^2 (w null: weights 1).
double WeightedSquaredError(const float* x, const float* w, int n, float scale,
                            float offset, const int* q) {
  double error = 0;
  for (int i = 0; i < n; ++i) {
    const double d = static_cast<double>(scale) * q[i] + offset - x[i];
    error += (w != nullptr ? w[i] : 1.0) * d * d;
  }
  return error;
}

std::vector<int> Widen(const uint8_t* q, int n) { return {q, q + n}; }
std::vector<int> Widen(const int8_t* q, int n) { return {q, q + n}; }

TEST(RoundClampTest, RoundsToNearestEvenAndClamps) {
  EXPECT_EQ(RoundClamp(2.5f, 0, 15), 2);
  EXPECT_EQ(RoundClamp(3.5f, 0, 15), 4);
  EXPECT_EQ(RoundClamp(-2.5f, -8, 7), -2);
  EXPECT_EQ(RoundClamp(2.49f, 0, 15), 2);
  EXPECT_EQ(RoundClamp(99.0f, 0, 15), 15);
  EXPECT_EQ(RoundClamp(-99.0f, -8, 7), -8);
  EXPECT_EQ(RoundClamp(std::numeric_limits<float>::infinity(), 0, 3), 3);
  EXPECT_EQ(RoundClamp(-std::numeric_limits<float>::infinity(), 0, 3), 0);
  EXPECT_EQ(RoundClamp(std::nanf(""), -4, 3), -4);
}

TEST(FitAffineTest, NearTheExactOptimumOnSmallGroups) {
  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_real_distribution<float> uniform(0.1f, 2.0f);
  double total_ratio = 0;
  int cases = 0;
  for (bool nonpositive : {true, false}) {
    for (int trial = 0; trial < 60; ++trial) {
      const int n = 7;
      std::vector<float> x(n), w(n);
      for (int i = 0; i < n; ++i)
        x[i] = normal(rng) + (trial % 3 == 0 ? 1.5f : 0);
      for (int i = 0; i < n; ++i) w[i] = uniform(rng);
      uint8_t q[n];
      const AffineFit fit = FitAffine(x.data(), w.data(), n, 3, nonpositive, q);
      ASSERT_GE(fit.scale, 0.0f);
      if (nonpositive) ASSERT_LE(fit.offset, 0.0f);
      const double got = WeightedSquaredError(x.data(), w.data(), n, fit.scale,
                                              fit.offset, Widen(q, n).data());
      const double best = BruteForceAffine(x, w, 3, nonpositive);
      ASSERT_GE(got, best * (1 - 1e-4) - 1e-9)
          << "beat the exhaustive optimum?";
      ASSERT_LE(got, best * 1.25 + 1e-9) << "trial " << trial;
      total_ratio += got / std::max(best, 1e-12);
      ++cases;
    }
  }
  EXPECT_LT(total_ratio / cases, 1.005);
}

TEST(FitAffineTest, NeverWorseThanMinMaxRounding) {
  std::mt19937 rng(11);
  std::student_t_distribution<float> heavy(2.0f);
  for (int q_max : {3, 15, 31}) {
    for (int trial = 0; trial < 200; ++trial) {
      const int n = 32;
      std::vector<float> x(n);
      for (float& v : x) v = heavy(rng);
      uint8_t q[n];
      const AffineFit fit = FitAffine(x.data(), nullptr, n, q_max, true, q);
      float lo = 0, hi = x[0];
      for (float v : x) lo = std::min(lo, v), hi = std::max(hi, v);
      const float scale = (hi - lo) / q_max;
      std::vector<int> naive(n);
      for (int i = 0; i < n; ++i)
        naive[i] = RoundClamp((x[i] - lo) / scale, 0, q_max);
      const double naive_error =
          WeightedSquaredError(x.data(), nullptr, n, scale, lo, naive.data());
      EXPECT_LE(WeightedSquaredError(x.data(), nullptr, n, fit.scale,
                                     fit.offset, Widen(q, n).data()),
                naive_error * (1 + 1e-6));
    }
  }
}

TEST(FitAffineTest, DegenerateGroups) {
  const float zeros[4] = {0, 0, 0, 0};
  uint8_t q[4] = {9, 9, 9, 9};
  AffineFit fit = FitAffine(zeros, nullptr, 4, 15, true, q);
  EXPECT_EQ(fit.scale, 0.0f);
  EXPECT_EQ(fit.offset, 0.0f);
  for (uint8_t v : q) EXPECT_EQ(v, 0);
  // A constant positive group with a non-positive offset: scale * 15 = c.
  const float twos[4] = {2, 2, 2, 2};
  fit = FitAffine(twos, nullptr, 4, 15, true, q);
  EXPECT_FLOAT_EQ(fit.scale * q[0], 2.0f);
  EXPECT_EQ(fit.offset, 0.0f);
  // Constant negative: all in the offset.
  const float negative[4] = {-3, -3, -3, -3};
  fit = FitAffine(negative, nullptr, 4, 15, false, q);
  EXPECT_EQ(fit.offset, -3.0f);
  EXPECT_EQ(q[0], 0);
  // All-zero weights fall back to the unweighted fit.
  const float x[4] = {-1, 0.5f, 2, 3};
  const float no_weight[4] = {0, 0, 0, 0};
  uint8_t q_unweighted[4];
  const AffineFit a = FitAffine(x, no_weight, 4, 3, true, q);
  const AffineFit b = FitAffine(x, nullptr, 4, 3, true, q_unweighted);
  EXPECT_EQ(a.scale, b.scale);
  EXPECT_EQ(a.offset, b.offset);
}

TEST(FitSymmetricTest, NearTheExactOptimumOnSmallGroups) {
  std::mt19937 rng(3);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_real_distribution<float> uniform(0.1f, 2.0f);
  double total_ratio = 0;
  for (int trial = 0; trial < 80; ++trial) {
    const int n = 6;
    std::vector<float> x(n), w(n);
    for (float& v : x) v = normal(rng);
    for (float& v : w) v = uniform(rng);
    int8_t q[n];
    const float scale = FitSymmetric(x.data(), w.data(), n, 4, q);
    const double got = WeightedSquaredError(x.data(), w.data(), n, scale, 0,
                                            Widen(q, n).data());
    const double best = BruteForceSymmetric(x, w, 4);
    ASSERT_GE(got, best * (1 - 1e-4) - 1e-9);
    // The symmetric grid is coarse (see scale_fit.cc): single tiny groups can
    // miss the optimum by more, the average stays close.
    ASSERT_LE(got, best * 2.0 + 1e-9) << "trial " << trial;
    for (int8_t v : q) ASSERT_TRUE(v >= -4 && v <= 3);
    total_ratio += got / std::max(best, 1e-12);
  }
  EXPECT_LT(total_ratio / 80, 1.02);
}

TEST(FitSymmetricTest, KeepsTheDominantValueAndHandlesZeros) {
  // One dominant value: represented almost exactly.
  const float x[4] = {0.1f, -0.2f, 8.0f, 0.3f};
  int8_t q[4];
  const float scale = FitSymmetric(x, nullptr, 4, 8, q);
  EXPECT_NEAR(scale * q[2], 8.0f, 0.05f);
  const float zeros[3] = {0, 0, 0};
  EXPECT_EQ(FitSymmetric(zeros, nullptr, 3, 8, q), 0.0f);
  EXPECT_EQ(q[0], 0);
}

// The AVX2 loops and the portable ones give the same bits, for every group
// size the formats use and odd ones (vector tails).
TEST(FitTest, VectorAndScalarLoopsAgreeBitForBit) {
  std::mt19937 rng(9);
  std::student_t_distribution<float> heavy(2.0f);
  std::uniform_real_distribution<float> uniform(0.0f, 3.0f);
  for (const int n : {16, 32, 13, 27, 100}) {
    for (int trial = 0; trial < 300; ++trial) {
      std::vector<float> x(n), w(n);
      for (float& v : x) v = heavy(rng);
      for (float& v : w) v = uniform(rng);
      const int q_max = trial % 2 ? 15 : 3;
      uint8_t qa[256], qb[256];
      int8_t sa[256], sb[256];
      UseScalarFitsForTesting(true);
      const AffineFit a =
          FitAffine(x.data(), w.data(), n, q_max, trial % 3 == 0, qa);
      const float scale_a = FitSymmetric(x.data(), w.data(), n, 4, sa);
      UseScalarFitsForTesting(false);
      const AffineFit b =
          FitAffine(x.data(), w.data(), n, q_max, trial % 3 == 0, qb);
      const float scale_b = FitSymmetric(x.data(), w.data(), n, 4, sb);
      ASSERT_EQ(a.scale, b.scale) << n << " " << trial;
      ASSERT_EQ(a.offset, b.offset);
      ASSERT_EQ(std::memcmp(qa, qb, n), 0);
      ASSERT_EQ(scale_a, scale_b);
      ASSERT_EQ(std::memcmp(sa, sb, n), 0);
    }
  }
}

TEST(FitTest, RejectsOversizedGroupsWithoutTouchingMemory) {
  std::vector<float> x(300, 1.0f);
  EXPECT_EQ(FitSymmetric(x.data(), nullptr, 300, 8, nullptr), 0.0f);
  EXPECT_EQ(FitAffine(x.data(), nullptr, 300, 15, true, nullptr).scale, 0.0f);
}

}  // namespace
}  // namespace quant
