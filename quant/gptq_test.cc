#include "quant/gptq.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "format/ggml_blocks.h"
#include "format/half.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace quant {
namespace {

using ::testing::HasSubstr;

struct Problem {
  int64_t rows, cols;
  std::vector<float> w;   // [rows, cols]
  std::vector<float> x;   // [samples, cols] calibration inputs
  std::vector<double> h;  // 2/N X^T X
};

// Correlated inputs with uneven scales, as activations are.
Problem MakeProblem(int64_t rows, int64_t cols, int64_t samples,
                    uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal;
  Problem p{rows, cols, {}, {}, {}};
  for (int64_t i = 0; i < rows * cols; ++i) p.w.push_back(normal(rng) * 0.05f);
  std::vector<float> scale(cols);
  for (auto& s : scale) s = std::exp(normal(rng));
  for (int64_t n = 0; n < samples; ++n) {
    const float shared = normal(rng);
    for (int64_t c = 0; c < cols; ++c) {
      p.x.push_back(scale[c] * (normal(rng) + 0.5f * shared));
    }
  }
  p.h.assign(cols * cols, 0.0);
  for (int64_t n = 0; n < samples; ++n) {
    for (int64_t i = 0; i < cols; ++i) {
      for (int64_t j = 0; j < cols; ++j) {
        p.h[i * cols + j] +=
            2.0 * p.x[n * cols + i] * p.x[n * cols + j] / samples;
      }
    }
  }
  return p;
}

// GPTQ as the paper states it, one column at a time in float64 with no lazy
// batches: the oracle. Group parameters follow AutoGPTQ's min-max rule.
struct OracleResult {
  std::vector<int32_t> q;
  double loss = 0;
};

OracleResult OracleGptq(const Problem& p, const GptqOptions& o) {
  const int64_t rows = p.rows, cols = p.cols;
  const int maxq = (1 << o.bits) - 1;
  std::vector<double> w(p.w.begin(), p.w.end()), h = p.h;
  std::vector<int64_t> perm(cols);
  std::iota(perm.begin(), perm.end(), 0);
  if (o.desc_act) {
    std::stable_sort(perm.begin(), perm.end(), [&](int64_t a, int64_t b) {
      return h[a * cols + a] > h[b * cols + b];
    });
  }
  auto params = [&](const std::vector<double>& m, int64_t first, int64_t n,
                    std::vector<double>& scale, std::vector<int>& zero) {
    scale.assign(rows, 0);
    zero.assign(rows, 0);
    for (int64_t r = 0; r < rows; ++r) {
      double lo = 0, hi = 0;
      for (int64_t k = first; k < first + n; ++k) {
        lo = std::min(lo, m[r * cols + k]), hi = std::max(hi, m[r * cols + k]);
      }
      if (o.sym) {
        hi = std::max(-lo, hi);
        if (lo < 0) lo = -hi;
      }
      if (lo == 0 && hi == 0) lo = -1, hi = 1;
      // Stored as fp16, as every checkpoint format keeps it.
      scale[r] = HalfToFloat(FloatToHalf(static_cast<float>((hi - lo) / maxq)));
      zero[r] =
          o.sym ? (maxq + 1) / 2
                : std::max(1, static_cast<int>(std::nearbyint(-lo / scale[r])));
    }
  };
  std::vector<std::vector<double>> static_scale;
  std::vector<std::vector<int>> static_zero;
  const int64_t gs = o.group_size < 0 ? cols : o.group_size;
  if (o.static_groups || o.group_size < 0) {
    for (int64_t first = 0; first < cols; first += gs) {
      static_scale.emplace_back();
      static_zero.emplace_back();
      params(w, first, std::min(gs, cols - first), static_scale.back(),
             static_zero.back());
    }
  }
  // Permute, dampen, invert (Gauss-Jordan), upper Cholesky of the inverse.
  std::vector<double> pw(rows * cols), ph(cols * cols);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < cols; ++j) pw[r * cols + j] = w[r * cols + perm[j]];
  for (int64_t i = 0; i < cols; ++i)
    for (int64_t j = 0; j < cols; ++j)
      ph[i * cols + j] = h[perm[i] * cols + perm[j]];
  double mean = 0;
  for (int64_t j = 0; j < cols; ++j) mean += ph[j * cols + j];
  for (int64_t j = 0; j < cols; ++j)
    ph[j * cols + j] += o.damp_percent * mean / cols;
  std::vector<double> inv(cols * cols, 0);
  for (int64_t i = 0; i < cols; ++i) inv[i * cols + i] = 1;
  for (int64_t c = 0; c < cols; ++c) {
    const double pivot = ph[c * cols + c];
    for (int64_t k = 0; k < cols; ++k)
      ph[c * cols + k] /= pivot, inv[c * cols + k] /= pivot;
    for (int64_t r = 0; r < cols; ++r) {
      if (r == c) continue;
      const double f = ph[r * cols + c];
      for (int64_t k = 0; k < cols; ++k) {
        ph[r * cols + k] -= f * ph[c * cols + k];
        inv[r * cols + k] -= f * inv[c * cols + k];
      }
    }
  }
  std::vector<double> u(cols * cols, 0);  // inv = U^T U
  for (int64_t i = 0; i < cols; ++i) {
    double s = inv[i * cols + i];
    for (int64_t k = 0; k < i; ++k) s -= u[k * cols + i] * u[k * cols + i];
    u[i * cols + i] = std::sqrt(s);
    for (int64_t j = i + 1; j < cols; ++j) {
      double t = inv[i * cols + j];
      for (int64_t k = 0; k < i; ++k) t -= u[k * cols + i] * u[k * cols + j];
      u[i * cols + j] = t / u[i * cols + i];
    }
  }
  OracleResult out;
  out.q.assign(rows * cols, 0);
  std::vector<double> scale;
  std::vector<int> zero;
  for (int64_t j = 0; j < cols; ++j) {
    if (o.static_groups || o.group_size < 0) {
      scale = static_scale[perm[j] / gs];
      zero = static_zero[perm[j] / gs];
    } else if (j % gs == 0) {
      params(pw, j, std::min(gs, cols - j), scale, zero);
    }
    const double d = u[j * cols + j];
    for (int64_t r = 0; r < rows; ++r) {
      const double x = pw[r * cols + j];
      const int q = static_cast<int>(std::min<double>(
          std::max<double>(std::nearbyint(x / scale[r]) + zero[r], 0), maxq));
      out.q[r * cols + perm[j]] = q;
      const double e = (x - scale[r] * (q - zero[r])) / d;
      out.loss += e * e / 2;
      for (int64_t c = j + 1; c < cols; ++c)
        pw[r * cols + c] -= e * u[j * cols + c];
    }
  }
  return out;
}

void ExpectMatchesOracle(const Problem& p, const GptqOptions& o,
                         const std::string& what) {
  absl::StatusOr<GptqResult> got =
      GptqQuantize(p.w.data(), p.rows, p.cols, p.h, o);
  ASSERT_TRUE(got.ok()) << got.status();
  const OracleResult want = OracleGptq(p, o);
  int64_t same = 0;
  for (size_t i = 0; i < want.q.size(); ++i)
    same += got->quantized.q[i] == want.q[i];
  // Float32 with lazy batches against float64 one column at a time: a few
  // roundings may land on the other side.
  EXPECT_GE(static_cast<double>(same) / want.q.size(), 0.99) << what;
  EXPECT_NEAR(got->loss / want.loss, 1.0, 0.01) << what;
}

TEST(GptqTest, MatchesTheUnbatchedOracle) {
  const Problem p = MakeProblem(9, 96, 400, 1);
  for (int bits : {2, 3, 4, 8}) {
    for (int group : {-1, 32}) {
      for (bool sym : {true, false}) {
        GptqOptions o;
        o.bits = bits, o.group_size = group, o.sym = sym, o.block_size = 40;
        ExpectMatchesOracle(p, o,
                            "bits " + std::to_string(bits) + " group " +
                                std::to_string(group) +
                                (sym ? " sym" : " asym"));
      }
    }
  }
}

TEST(GptqTest, ActOrderAndStaticGroupsMatchTheOracle) {
  const Problem p = MakeProblem(7, 80, 300, 2);
  for (bool static_groups : {false, true}) {
    for (int block : {16, 128}) {  // Groups of 20 straddle 16-column blocks.
      GptqOptions o;
      o.bits = 3, o.group_size = 20, o.desc_act = true;
      o.static_groups = static_groups, o.block_size = block, o.sym = false;
      ExpectMatchesOracle(p, o,
                          std::string(static_groups ? "static" : "dynamic") +
                              " block " + std::to_string(block));
    }
  }
}

// The g_idx and per-group parameters describe the levels: dequantizing with
// them gives what GPTQ decided, and act-order groups follow the permutation.
TEST(GptqTest, GroupIndexAndParameters) {
  const Problem p = MakeProblem(5, 64, 200, 3);
  GptqOptions o;
  o.bits = 4, o.group_size = 16, o.desc_act = true;
  absl::StatusOr<GptqResult> r = GptqQuantize(p.w.data(), 5, 64, p.h, o);
  ASSERT_TRUE(r.ok()) << r.status();
  const QuantizedLinear& q = r->quantized;
  EXPECT_EQ(q.groups(), 4);
  std::vector<int> members(4, 0);
  for (int32_t g : q.g_idx) ++members[g];
  EXPECT_EQ(members, std::vector<int>(4, 16));
  // Without act-order, g_idx is simply column / group_size.
  o.desc_act = false;
  r = GptqQuantize(p.w.data(), 5, 64, p.h, o);
  for (int c = 0; c < 64; ++c) EXPECT_EQ(r->quantized.g_idx[c], c / 16);
  for (int32_t v : r->quantized.q) ASSERT_TRUE(v >= 0 && v <= 15);
}

// GPTQ's output error on the calibration inputs beats round-to-nearest.
TEST(GptqTest, BeatsRoundToNearestOnTheLayerOutput) {
  const Problem p = MakeProblem(16, 128, 512, 4);
  auto output_error = [&](const std::vector<float>& q) {
    double e = 0;
    for (int64_t n = 0; n < 512; ++n) {
      for (int64_t r = 0; r < p.rows; ++r) {
        double d = 0;
        for (int64_t c = 0; c < p.cols; ++c) {
          d += (p.w[r * p.cols + c] - q[r * p.cols + c]) * p.x[n * p.cols + c];
        }
        e += d * d;
      }
    }
    return e;
  };
  for (int bits : {2, 3, 4}) {
    GptqOptions o;
    o.bits = bits, o.group_size = 32, o.sym = false;
    absl::StatusOr<GptqResult> g =
        GptqQuantize(p.w.data(), p.rows, p.cols, p.h, o);
    absl::StatusOr<QuantizedLinear> rtn =
        RtnQuantize(p.w.data(), p.rows, p.cols, bits, 32, false);
    ASSERT_TRUE(g.ok() && rtn.ok());
    EXPECT_LT(output_error(g->quantized.Dequantize()),
              0.9 * output_error(rtn->Dequantize()))
        << bits << " bits";
  }
}

TEST(GptqTest, DampeningGrowsUntilCholeskySucceeds) {
  // 10 samples for 48 inputs: H is singular; without dampening Cholesky fails.
  const Problem p = MakeProblem(4, 48, 10, 5);
  GptqOptions o;
  o.damp_percent = 0;
  absl::StatusOr<GptqResult> r = GptqQuantize(p.w.data(), 4, 48, p.h, o);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_GT(r->damp_percent_used, 0);
  EXPECT_LE(r->damp_percent_used, 0.01);
}

TEST(GptqTest, DeadInputsAndBadArguments) {
  Problem p = MakeProblem(3, 32, 100, 6);
  for (int64_t j = 0; j < 32; ++j) p.h[5 * 32 + j] = p.h[j * 32 + 5] = 0;
  absl::StatusOr<GptqResult> r =
      GptqQuantize(p.w.data(), 3, 32, p.h, GptqOptions());
  ASSERT_TRUE(r.ok()) << r.status();
  const std::vector<float> deq = r->quantized.Dequantize();
  for (int r2 = 0; r2 < 3; ++r2) EXPECT_EQ(deq[r2 * 32 + 5], 0.0f);  // Zeroed.
  GptqOptions bad;
  bad.bits = 9;
  EXPECT_THAT(
      std::string(GptqQuantize(p.w.data(), 3, 32, p.h, bad).status().message()),
      HasSubstr("bits must be 2 to 8, not 9"));
  bad = GptqOptions();
  bad.group_size = 0;
  EXPECT_EQ(GptqQuantize(p.w.data(), 3, 32, p.h, bad).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(GptqQuantize(p.w.data(), 3, 32,
                                       std::vector<double>(5), GptqOptions())
                              .status()
                              .message()),
              HasSubstr("the Hessian has 5 entries, expected 32^2"));
  EXPECT_EQ(RtnQuantize(p.w.data(), 0, 32, 4, 32, true).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(GptqTest, MseRangesLowerTheWeightError) {
  // Heavy-tailed weights: the min-max range wastes levels on outliers.
  std::mt19937 rng(7);
  std::exponential_distribution<float> tail(30.0f);
  const int64_t rows = 16, cols = 128;
  std::vector<float> w(rows * cols);
  for (size_t i = 0; i < w.size(); ++i) {
    w[i] = (i % 2 ? 1.0f : -1.0f) * tail(rng);
  }
  auto error = [&](bool mse) {
    const auto q = RtnQuantize(w.data(), rows, cols, 3, 64, false, mse);
    const std::vector<float> d = q->Dequantize();
    double total = 0;
    for (size_t i = 0; i < w.size(); ++i)
      total += (d[i] - w[i]) * (d[i] - w[i]);
    return total;
  };
  EXPECT_LT(error(true), 0.9 * error(false));
  Problem p = MakeProblem(16, 64, 200, 8);
  GptqOptions o;
  o.bits = 3, o.group_size = 32, o.sym = false, o.mse = true;
  const auto with_mse = GptqQuantize(p.w.data(), 16, 64, p.h, o);
  ASSERT_TRUE(with_mse.ok()) << with_mse.status();
  EXPECT_GT(with_mse->loss, 0);
}

TEST(GptqTest, GroupParamsAtBlockStartWithOneBlockAreStaticGroups) {
  // One lazy block over every column: the weights as the block began are
  // the original ones, which static groups use.
  Problem p = MakeProblem(12, 96, 300, 9);
  GptqOptions at_start;
  at_start.bits = 3, at_start.group_size = 32, at_start.sym = false;
  at_start.block_size = 96;
  at_start.group_params_at_block_start = true;
  GptqOptions fixed = at_start;
  fixed.group_params_at_block_start = false;
  fixed.static_groups = true;
  const auto a = GptqQuantize(p.w.data(), 12, 96, p.h, at_start);
  const auto b = GptqQuantize(p.w.data(), 12, 96, p.h, fixed);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(a->quantized.q, b->quantized.q);
  EXPECT_EQ(a->quantized.scales, b->quantized.scales);
  // With lazy blocks of 32 the later groups see earlier blocks' updates.
  at_start.block_size = 32;
  const auto c = GptqQuantize(p.w.data(), 12, 96, p.h, at_start);
  ASSERT_TRUE(c.ok());
  EXPECT_NE(c->quantized.scales, b->quantized.scales);
}

constexpr GgmlType kGgufGridTypes[] = {
    GgmlType::kQ8_0, GgmlType::kQ4_0, GgmlType::kQ4_1, GgmlType::kQ5_0,
    GgmlType::kQ5_1, GgmlType::kQ2_K, GgmlType::kQ3_K, GgmlType::kQ4_K,
    GgmlType::kQ5_K, GgmlType::kQ6_K};

// The type's own quantizer with the Hessian diagonal as importance: what
// re-fitting (or plain imatrix quantization) gives.
std::vector<uint8_t> WeightedRows(const Problem& p, GgmlType type) {
  const int64_t row_bytes = static_cast<int64_t>(*GgmlRowBytes(type, p.cols));
  std::vector<float> importance(p.cols);
  for (int64_t j = 0; j < p.cols; ++j) importance[j] = p.h[j * p.cols + j];
  std::vector<uint8_t> out(static_cast<size_t>(p.rows * row_bytes));
  for (int64_t r = 0; r < p.rows; ++r) {
    EXPECT_TRUE(QuantizeRowReference(type, p.w.data() + r * p.cols, p.cols,
                                     out.data() + r * row_bytes,
                                     importance.data())
                    .ok());
  }
  return out;
}

// With a diagonal Hessian no error can be compensated: GPTQ on a GGUF grid
// is then the type's weighted quantizer, byte for byte, where blocks are
// fitted once (act-order fits them up front; types without sub-blocks). The
// k-quants' sub-block refits may only lower the importance-weighted error.
TEST(GptqGgufTest, DiagonalHessianGivesTheWeightedQuantizer) {
  Problem p = MakeProblem(3, 512, 1, 8);
  std::mt19937 rng(9);
  std::uniform_real_distribution<double> uniform(0.1, 10.0);
  for (int64_t i = 0; i < p.cols; ++i) {
    for (int64_t j = 0; j < p.cols; ++j) {
      p.h[i * p.cols + j] = i == j ? uniform(rng) : 0.0;
    }
  }
  for (const GgmlType type : kGgufGridTypes) {
    for (const bool desc_act : {false, true}) {
      GptqOptions o;
      o.desc_act = desc_act;
      absl::StatusOr<GptqResult> r =
          GptqQuantizeGguf(p.w.data(), p.rows, p.cols, p.h, type, o);
      ASSERT_TRUE(r.ok()) << r.status();
      ASSERT_EQ(r->quantized.gguf_type, type);
      const std::vector<uint8_t> want = WeightedRows(p, type);
      if (SubBlockSize(type) > 0 && !desc_act) {
        std::vector<float> want_values(p.w.size());
        ASSERT_TRUE(DequantizeRowReference(type, want.data(), p.rows * p.cols,
                                           want_values.data())
                        .ok());
        const std::vector<float> got_values = r->quantized.Dequantize();
        double got_error = 0, want_error = 0;
        for (size_t i = 0; i < p.w.size(); ++i) {
          const double h = p.h[(i % p.cols) * (p.cols + 1)];
          got_error += h * std::pow(got_values[i] - p.w[i], 2);
          want_error += h * std::pow(want_values[i] - p.w[i], 2);
        }
        EXPECT_LE(got_error, want_error * (1 + 1e-6)) << GgmlTypeName(type);
        continue;
      }
      if (type != GgmlType::kQ8_0) {
        EXPECT_TRUE(r->quantized.gguf_rows == want)
            << GgmlTypeName(type) << (desc_act ? " act-order" : "");
        continue;
      }
      // llama.cpp rounds Q8_0 levels against the scale before its fp16
      // rounding; the solver rounds against the stored scale: a level may
      // differ by one, never for the worse.
      std::vector<float> got_values(p.w.size()), want_values(p.w.size());
      ASSERT_TRUE(DequantizeRowReference(type, want.data(), p.rows * p.cols,
                                         want_values.data())
                      .ok());
      got_values = r->quantized.Dequantize();
      for (size_t i = 0; i < p.w.size(); ++i) {
        EXPECT_LE(std::fabs(got_values[i] - p.w[i]),
                  std::fabs(want_values[i] - p.w[i]))
            << i;
      }
    }
  }
}

// GgufSolveGrid as an outside solver uses it (the GPU's): with a diagonal
// Hessian nothing is compensated, so fitting each group on the original
// weights when the loop reaches it and rounding onto the steps and offsets
// read back gives GptqQuantizeGguf's file bytes exactly.
TEST(GptqGgufTest, TheSolveGridServesAnOutsideSolver) {
  Problem p = MakeProblem(3, 512, 1, 8);
  std::vector<float> importance(p.cols);
  for (int64_t i = 0; i < p.cols; ++i) {
    for (int64_t j = 0; j < p.cols; ++j) {
      p.h[i * p.cols + j] = i == j ? 0.5 + i % 5 : 0.0;
    }
    importance[i] = static_cast<float>(p.h[i * p.cols + i]);
  }
  for (const GgmlType type : kGgufGridTypes) {
    for (const bool desc_act : {false, true}) {
      GptqOptions o;
      o.desc_act = desc_act;
      absl::StatusOr<GptqResult> want =
          GptqQuantizeGguf(p.w.data(), p.rows, p.cols, p.h, type, o);
      ASSERT_TRUE(want.ok()) << want.status();
      absl::StatusOr<std::unique_ptr<GgufSolveGrid>> grid =
          GgufSolveGrid::Create(type, p.rows, p.cols, importance, o);
      ASSERT_TRUE(grid.ok()) << grid.status();
      GgufSolveGrid& g = **grid;
      const int64_t width = g.group_width();
      EXPECT_EQ(width == 0, desc_act);
      std::vector<int> levels(p.w.size());
      auto round = [&](int64_t i) {
        const float step = g.steps()[i], offset = g.offsets()[i];
        int level = std::max(g.level_min(), 0);
        if (step != 0) {
          const float q = std::nearbyint((p.w[i] - offset) / step);
          level = static_cast<int>(
              std::min(std::max(q, static_cast<float>(g.level_min())),
                       static_cast<float>(g.level_max())));
        }
        levels[i] = level;
      };
      if (width == 0) {
        ASSERT_TRUE(g.FitUpFront(p.w.data()).ok());
        for (size_t i = 0; i < p.w.size(); ++i) round(i);
      } else {
        for (int64_t first = 0; first < p.cols; first += width) {
          ASSERT_TRUE(g.FitGroup(first, width, [&](int64_t r, int64_t k) {
                         return p.w[r * p.cols + first + k];
                       }).ok());
          for (int64_t r = 0; r < p.rows; ++r) {
            for (int64_t k = 0; k < width; ++k) round(r * p.cols + first + k);
          }
        }
      }
      const QuantizedLinear got = g.Take(levels);
      EXPECT_EQ(got.gguf_type, type);
      EXPECT_TRUE(got.gguf_rows == want->quantized.gguf_rows)
          << GgmlTypeName(type) << (desc_act ? " act-order" : "");
    }
  }
  EXPECT_EQ(GgufSolveGrid::Create(GgmlType::kQ4_K, 2, 256,
                                  std::vector<float>(7), GptqOptions())
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
}

// Output error tr(dW H dW^T) on correlated inputs: GPTQ on the grid beats
// the weighted quantizer of every type, and its solution is what the rows
// decode to.
TEST(GptqGgufTest, BeatsTheWeightedQuantizerOnTheLayerOutput) {
  const Problem p = MakeProblem(8, 512, 1024, 10);
  auto output_error = [&](const std::vector<float>& q) {
    double total = 0;
    for (int64_t r = 0; r < p.rows; ++r) {
      for (int64_t i = 0; i < p.cols; ++i) {
        const double di = double{q[r * p.cols + i]} - p.w[r * p.cols + i];
        for (int64_t j = 0; j < p.cols; ++j) {
          total += di * p.h[i * p.cols + j] *
                   (double{q[r * p.cols + j]} - p.w[r * p.cols + j]);
        }
      }
    }
    return total;
  };
  for (const GgmlType type : kGgufGridTypes) {
    absl::StatusOr<GptqResult> r =
        GptqQuantizeGguf(p.w.data(), p.rows, p.cols, p.h, type, GptqOptions());
    ASSERT_TRUE(r.ok()) << r.status();
    const std::vector<uint8_t> plain_rows = WeightedRows(p, type);
    std::vector<float> plain(p.w.size()), solved(p.w.size());
    ASSERT_TRUE(DequantizeRowReference(type, plain_rows.data(), p.rows * p.cols,
                                       plain.data())
                    .ok());
    ASSERT_TRUE(DequantizeRowReference(type, r->quantized.gguf_rows.data(),
                                       p.rows * p.cols, solved.data())
                    .ok());
    EXPECT_TRUE(r->quantized.Dequantize() == solved);
    const double ratio = output_error(solved) / output_error(plain);
    EXPECT_LT(ratio, 0.8) << GgmlTypeName(type);
  }
}

// Lazy batches change the arithmetic, not the algorithm: blocks fitted on
// weights with pending updates applied (block_size 64 < 256) agree with one
// batch per super-block.
TEST(GptqGgufTest, LazyBatchSizeDoesNotChangeTheSolution) {
  const Problem p = MakeProblem(6, 512, 600, 11);
  for (const GgmlType type : {GgmlType::kQ4_K, GgmlType::kQ6_K}) {
    GptqOptions small, large;
    small.block_size = 64, large.block_size = 256;
    absl::StatusOr<GptqResult> a =
        GptqQuantizeGguf(p.w.data(), p.rows, p.cols, p.h, type, small);
    absl::StatusOr<GptqResult> b =
        GptqQuantizeGguf(p.w.data(), p.rows, p.cols, p.h, type, large);
    ASSERT_TRUE(a.ok() && b.ok());
    const std::vector<float> x = a->quantized.Dequantize();
    const std::vector<float> y = b->quantized.Dequantize();
    int64_t same = 0;
    for (size_t i = 0; i < x.size(); ++i) same += x[i] == y[i];
    EXPECT_GE(static_cast<double>(same) / x.size(), 0.99) << GgmlTypeName(type);
    EXPECT_NEAR(a->loss / b->loss, 1.0, 0.01) << GgmlTypeName(type);
  }
}

TEST(GptqGgufTest, BadArguments) {
  const Problem p = MakeProblem(2, 256, 50, 12);
  EXPECT_THAT(std::string(GptqQuantizeGguf(p.w.data(), 2, 256, p.h,
                                           GgmlType::kF16, GptqOptions())
                              .status()
                              .message()),
              HasSubstr("grid of GGUF type f16"));
  const Problem odd = MakeProblem(2, 96, 50, 13);
  EXPECT_EQ(GptqQuantizeGguf(odd.w.data(), 2, 96, odd.h, GgmlType::kQ4_K,
                             GptqOptions())
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(
      std::string(GptqQuantizeGguf(p.w.data(), 2, 256, std::vector<double>(7),
                                   GgmlType::kQ4_K, GptqOptions())
                      .status()
                      .message()),
      HasSubstr("the Hessian has 7 entries"));
}

}  // namespace
}  // namespace quant
