#include "kernels/cpu/quantize_rows.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
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

constexpr GgmlType kTypes[] = {
    GgmlType::kF32,  GgmlType::kF16,  GgmlType::kBF16, GgmlType::kQ8_0,
    GgmlType::kQ4_0, GgmlType::kQ4_1, GgmlType::kQ5_0, GgmlType::kQ5_1,
    GgmlType::kQ2_K, GgmlType::kQ3_K, GgmlType::kQ4_K, GgmlType::kQ5_K,
    GgmlType::kQ6_K};

// Column counts to test: odd multiples of the block size, and vector tails
// for the plain types.
std::vector<int64_t> ColumnCounts(GgmlType type) {
  const int64_t block = GetGgmlTypeTraits(type).block_size;
  if (block == 256) return {256, 1280};
  std::vector<int64_t> cols = {32, 96, 544};
  if (block == 1) cols.insert(cols.end(), {1, 7, 37});
  return cols;
}

std::vector<QuantizeIsa> IsasToTest() {
  std::vector<QuantizeIsa> isas = {QuantizeIsa::kScalar};
  if (BestQuantizeIsa() != QuantizeIsa::kScalar) {
    isas.push_back(BestQuantizeIsa());
  }
  return isas;
}

// Restores the default path when a test ends.
class QuantizeRowsTest : public ::testing::Test {
 protected:
  void TearDown() override { SetQuantizeIsaForTesting(BestQuantizeIsa()); }
};

// Values that exercise every branch: ordinary and heavy-tailed data at many
// scales, zero blocks (+0 and -0), blocks so tiny that 1/d overflows, blocks
// with subnormal fp16 scales, exact rounding ties for Q8_0 (amax 127, x.5)
// and Q4_0 (equal magnitudes of both signs), and values near the F16 limit
// and at F16 rounding midpoints.
std::vector<float> HardData(int64_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal;
  std::cauchy_distribution<float> cauchy;
  std::uniform_int_distribution<int> pick(0, 9);
  std::uniform_int_distribution<int> small_int(-127, 127);
  std::vector<float> x(static_cast<size_t>(n));
  for (int64_t b = 0; b * 32 < n; ++b) {
    const int kind = pick(rng);
    const float scale = std::ldexp(1.0f, static_cast<int>(rng() % 40) - 25);
    for (int64_t j = b * 32; j < std::min<int64_t>(n, (b + 1) * 32); ++j) {
      float v = 0.0f;
      switch (kind) {
        case 0:
          v = normal(rng) * scale;
          break;
        case 1:
          v = std::fmax(-6e4f, std::fmin(6e4f, cauchy(rng)));
          break;
        case 2:
          v = (rng() & 1) ? 0.0f : -0.0f;
          break;
        case 3:
          v = normal(rng) * 1e-38f;  // 1/d overflows.
          break;
        case 4:
          v = normal(rng) * 1e-6f;  // Subnormal fp16 scale.
          break;
        case 5:
          v = static_cast<float>(small_int(rng)) + 0.5f * (rng() & 1);
          if (j % 32 == 3) v = 127.0f;
          break;
        case 6:
          v = (rng() & 1 ? 1.0f : -1.0f) * static_cast<float>(rng() % 9);
          break;
        case 7:  // Near the F16 limit and at midpoints between halves.
          v = (rng() & 1 ? 1.0f : -1.0f) *
              (65519.0f - static_cast<float>(rng() % 8));
          if (rng() & 1) {
            const uint16_t h = static_cast<uint16_t>(rng() % 0x7bff);
            v = (HalfToFloat(h) + HalfToFloat(h + 1)) / 2;  // Exact.
          }
          break;
        default:
          v = normal(rng);
          break;
      }
      x[static_cast<size_t>(j)] = v;
    }
  }
  return x;
}

std::vector<uint8_t> ReferenceRows(GgmlType type, const std::vector<float>& x,
                                   int64_t rows, int64_t cols,
                                   const float* importance = nullptr) {
  const uint64_t row_bytes = *GgmlRowBytes(type, cols);
  std::vector<uint8_t> out(rows * row_bytes);
  for (int64_t r = 0; r < rows; ++r) {
    const absl::Status status =
        QuantizeRowReference(type, x.data() + r * cols, cols,
                             out.data() + r * row_bytes, importance);
    EXPECT_TRUE(status.ok()) << status;
  }
  return out;
}

TEST_F(QuantizeRowsTest, MatchesReferenceForOddShapesAndThreadCounts) {
  for (const QuantizeIsa isa : IsasToTest()) {
    SetQuantizeIsaForTesting(isa);
    ASSERT_EQ(ActiveQuantizeIsa(), isa);
    for (const GgmlType type : kTypes) {
      const bool slow = GetGgmlTypeTraits(type).block_size > 1 &&
                        GetBlockQuantizer(type, false) != nullptr;
      for (const int64_t rows : {1, 3, 7, slow ? 29 : 129}) {
        for (const int64_t cols : ColumnCounts(type)) {
          const std::vector<float> x =
              HardData(rows * cols, static_cast<uint32_t>(rows * 1000 + cols));
          const std::vector<uint8_t> expected =
              ReferenceRows(type, x, rows, cols);
          for (const int threads : {1, 2, 3, 0}) {
            std::vector<uint8_t> got(expected.size(), 0xab);
            const absl::Status status =
                QuantizeRows(type, x.data(), rows, cols, got.data(), threads);
            ASSERT_TRUE(status.ok()) << status;
            ASSERT_TRUE(got == expected)
                << QuantizeIsaName(isa) << " " << GgmlTypeName(type) << " "
                << rows << "x" << cols << " threads " << threads;

            std::vector<float> back(x.size(), -1.0f);
            ASSERT_TRUE(DequantizeRows(type, got.data(), rows, cols,
                                       back.data(), threads)
                            .ok());
            std::vector<float> back_expected(x.size());
            const uint64_t row_bytes = *GgmlRowBytes(type, cols);
            for (int64_t r = 0; r < rows; ++r) {
              ASSERT_TRUE(
                  DequantizeRowReference(type, expected.data() + r * row_bytes,
                                         cols, back_expected.data() + r * cols)
                      .ok());
            }
            ASSERT_EQ(std::memcmp(back.data(), back_expected.data(),
                                  back.size() * sizeof(float)),
                      0)
                << QuantizeIsaName(isa) << " " << GgmlTypeName(type) << " "
                << rows << "x" << cols << " threads " << threads;
          }
        }
      }
    }
  }
}

// Dequantizing arbitrary bytes (inf and NaN scales, NaN halves) matches the
// reference bit for bit.
TEST_F(QuantizeRowsTest, DequantizeArbitraryBytesMatchesReference) {
  std::mt19937 rng(5);
  for (const QuantizeIsa isa : IsasToTest()) {
    SetQuantizeIsaForTesting(isa);
    for (const GgmlType type : kTypes) {
      const int64_t rows = 5;
      const int64_t cols =
          GetGgmlTypeTraits(type).block_size == 1 ? 65536 : 4096;
      const uint64_t row_bytes = *GgmlRowBytes(type, cols);
      std::vector<uint8_t> bytes(rows * row_bytes);
      for (size_t i = 0; i < bytes.size(); ++i) {
        bytes[i] = static_cast<uint8_t>(rng());
      }
      if (type == GgmlType::kF16 || type == GgmlType::kBF16) {
        for (uint32_t h = 0; h < 65536; ++h) {  // Row 0: every value.
          bytes[2 * h] = static_cast<uint8_t>(h);
          bytes[2 * h + 1] = static_cast<uint8_t>(h >> 8);
        }
      }
      std::vector<float> expected(rows * cols);
      for (int64_t r = 0; r < rows; ++r) {
        ASSERT_TRUE(DequantizeRowReference(type, bytes.data() + r * row_bytes,
                                           cols, expected.data() + r * cols)
                        .ok());
      }
      for (const int threads : {1, 2, 3}) {
        std::vector<float> got(rows * cols);
        ASSERT_TRUE(
            DequantizeRows(type, bytes.data(), rows, cols, got.data(), threads)
                .ok());
        ASSERT_EQ(std::memcmp(got.data(), expected.data(),
                              got.size() * sizeof(float)),
                  0)
            << QuantizeIsaName(isa) << " " << GgmlTypeName(type);
      }
    }
  }
}

TEST_F(QuantizeRowsTest, ReportsTheFirstUnrepresentableValueInRowMajorOrder) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  struct Case {
    GgmlType type;
    float value;
    int64_t row, col;
    const char* message;
    int64_t cols = 544;
  };
  const Case cases[] = {
      {GgmlType::kQ8_0, nan, 5, 500,
       "q8_0 cannot represent nan at row 5, column 500"},
      {GgmlType::kQ4_0, -inf, 5, 500,
       "q4_0 cannot represent -inf at row 5, column 500"},
      {GgmlType::kF32, inf, 5, 500,
       "f32 cannot represent inf at row 5, column 500"},
      {GgmlType::kF16, 1e5f, 5, 500,
       "f16 cannot represent 100000 at row 5, column 500: it rounds to "
       "infinity"},
      {GgmlType::kBF16, nan, 5, 500,
       "bf16 cannot represent nan at row 5, column 500"},
      {GgmlType::kQ8_0, 2e7f, 5, 500,
       "q8_0 cannot represent the block at row 5, columns 480..511: its "
       "largest magnitude 2e+07 makes the fp16 scale infinite"},
      {GgmlType::kQ4_0, -1e6f, 5, 500,
       "q4_0 cannot represent the block at row 5, columns 480..511: its "
       "largest magnitude 1e+06 makes the fp16 scale infinite"},
      {GgmlType::kQ4_1, nan, 5, 500,
       "q4_1 cannot represent nan at row 5, column 500"},
      {GgmlType::kQ5_1, -inf, 5, 500,
       "q5_1 cannot represent -inf at row 5, column 500"},
      {GgmlType::kQ5_0, 2e6f, 5, 500,
       "q5_0 cannot represent the block at row 5, columns 480..511: its "
       "largest magnitude 2e+06 makes the fp16 scale infinite"},
      {GgmlType::kQ4_K, nan, 5, 500,
       "q4_K cannot represent nan at row 5, column 500", 768},
      {GgmlType::kQ2_K, inf, 5, 500,
       "q2_K cannot represent inf at row 5, column 500", 768},
      {GgmlType::kQ6_K, 1e38f, 5, 500,
       "q6_K cannot represent the block at row 5, columns 256..511: its "
       "largest magnitude 1e+38 makes the fp16 scale infinite",
       768},
      {GgmlType::kQ3_K, -3e9f, 5, 500,
       "q3_K cannot represent the block at row 5, columns 256..511: its "
       "largest magnitude 3e+09 makes the fp16 scale infinite",
       768},
  };
  const int64_t rows = 9;
  for (const QuantizeIsa isa : IsasToTest()) {
    SetQuantizeIsaForTesting(isa);
    for (const Case& c : cases) {
      const int64_t cols = c.cols;
      std::vector<float> x = HardData(rows * cols, 9);
      for (float& v : x) v = std::fmax(-100.0f, std::fmin(100.0f, v));
      x[c.row * cols + c.col] = c.value;
      x[6 * cols + 3] = nan;         // Later in row-major order.
      x[8 * cols + cols - 1] = inf;  // In the last task.
      std::vector<uint8_t> out(rows * *GgmlRowBytes(c.type, cols));
      const std::vector<float> weights(cols, 1.0f);
      for (const int threads : {1, 2, 3}) {
        for (const float* importance :
             {static_cast<const float*>(nullptr), weights.data()}) {
          const absl::Status status = QuantizeRows(
              c.type, x.data(), rows, cols, out.data(), threads, importance);
          EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
          EXPECT_EQ(status.message(), c.message)
              << QuantizeIsaName(isa) << " threads " << threads
              << (importance != nullptr ? " weighted" : "");
        }
      }
    }
  }
}

TEST_F(QuantizeRowsTest, BadArguments) {
  std::vector<float> x(1024, 1.0f);
  std::vector<uint8_t> out(4096);
  absl::Status status =
      QuantizeRows(GgmlType::kQ8_0, x.data(), 2, 33, out.data(), 2);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(status.message()),
              HasSubstr("row of 33 elements is not a multiple of the q8_0 "
                        "block size 32"));
  status = DequantizeRows(GgmlType::kQ4_0, out.data(), 2, 48, x.data(), 2);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(status.message()), HasSubstr("q4_0 block size 32"));
  status = QuantizeRows(GgmlType::kQ8_0, x.data(), -1, 32, out.data(), 2);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(status.message()),
              HasSubstr("row count -1 must not be negative"));
  status = QuantizeRows(GgmlType::kF32, x.data(), int64_t{1} << 40,
                        int64_t{1} << 30, out.data(), 2);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(status.message()), HasSubstr("overflow"));
  status = QuantizeRows(GgmlType::kQ8_K, x.data(), 1, 256, out.data(), 2);
  EXPECT_EQ(status.code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(std::string(status.message()),
              HasSubstr("(de)quantization to q8_K is not supported yet"));
  status = QuantizeRows(GgmlType::kQ8_0, nullptr, 1, 32, out.data(), 2);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(status.message()), HasSubstr("null"));
  // Empty shapes are fine and write nothing.
  EXPECT_TRUE(QuantizeRows(GgmlType::kQ8_0, nullptr, 0, 32, nullptr, 2).ok());
  EXPECT_TRUE(QuantizeRows(GgmlType::kQ4_0, nullptr, 5, 0, nullptr, 2).ok());
  EXPECT_TRUE(DequantizeRows(GgmlType::kQ4_0, nullptr, 0, 64, nullptr, 2).ok());
}

TEST_F(QuantizeRowsTest, Importance) {
  const int64_t rows = 5;
  std::mt19937 rng(17);
  std::uniform_real_distribution<float> positive(0.0f, 4.0f);
  for (const GgmlType type : kTypes) {
    const int64_t cols = ColumnCounts(type).back();
    const std::vector<float> x = HardData(rows * cols, 11);
    std::vector<float> weights(cols);
    for (float& w : weights) w = positive(rng);
    const std::vector<uint8_t> plain = ReferenceRows(type, x, rows, cols);
    const std::vector<uint8_t> expected =
        ReferenceRows(type, x, rows, cols, weights.data());
    for (const int threads : {1, 2}) {
      std::vector<uint8_t> got(expected.size());
      ASSERT_TRUE(QuantizeRows(type, x.data(), rows, cols, got.data(), threads,
                               weights.data())
                      .ok());
      EXPECT_TRUE(got == expected) << GgmlTypeName(type);
    }
    // Ignored by the plain types and Q8_0, as in llama.cpp; used by the rest.
    const bool used = GetBlockQuantizer(type, true) != nullptr;
    EXPECT_EQ(expected != plain, used) << GgmlTypeName(type);
  }
}

TEST_F(QuantizeRowsTest, IsaSelection) {
  EXPECT_EQ(ActiveQuantizeIsa(), BestQuantizeIsa());
  SetQuantizeIsaForTesting(QuantizeIsa::kScalar);
  EXPECT_EQ(ActiveQuantizeIsa(), QuantizeIsa::kScalar);
  SetQuantizeIsaForTesting(QuantizeIsa::kAvx2);  // Capped at what the CPU has.
  EXPECT_EQ(ActiveQuantizeIsa(), BestQuantizeIsa());
  EXPECT_EQ(QuantizeIsaName(QuantizeIsa::kScalar), "scalar");
  EXPECT_EQ(QuantizeIsaName(QuantizeIsa::kAvx2), "avx2");
#if defined(__x86_64__)
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c")) {
    EXPECT_EQ(BestQuantizeIsa(), QuantizeIsa::kAvx2);
  }
#endif
}

}  // namespace
}  // namespace quant
