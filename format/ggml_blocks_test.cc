#include "format/ggml_blocks.h"

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "format/half.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace quant {
namespace {

using ::testing::ElementsAreArray;
using ::testing::HasSubstr;

std::vector<uint8_t> Quantize(GgmlType type, const std::vector<float>& x) {
  const absl::StatusOr<uint64_t> bytes =
      GgmlRowBytes(type, static_cast<int64_t>(x.size()));
  EXPECT_TRUE(bytes.ok()) << bytes.status();
  std::vector<uint8_t> out(bytes.ok() ? *bytes : 0, 0xcd);
  const absl::Status status = QuantizeRowReference(
      type, x.data(), static_cast<int64_t>(x.size()), out.data());
  EXPECT_TRUE(status.ok()) << status;
  return out;
}

std::vector<float> Dequantize(GgmlType type, const std::vector<uint8_t>& q,
                              int64_t n) {
  std::vector<float> out(static_cast<size_t>(n), -12345.0f);
  const absl::Status status =
      DequantizeRowReference(type, q.data(), n, out.data());
  EXPECT_TRUE(status.ok()) << status;
  return out;
}

uint16_t ScaleBits(const std::vector<uint8_t>& q, size_t block_offset) {
  return static_cast<uint16_t>(q[block_offset] | (q[block_offset + 1] << 8));
}

TEST(GgmlBlocksTest, Layout) {
  EXPECT_EQ(sizeof(BlockQ8_0), 34u);
  EXPECT_EQ(sizeof(BlockQ4_0), 18u);
  EXPECT_EQ(offsetof(BlockQ8_0, qs), 2u);
  EXPECT_EQ(offsetof(BlockQ4_0, qs), 2u);
  EXPECT_EQ(kQk8_0, 32);
  EXPECT_EQ(kQk4_0, 32);
}

// d = 127 / 127 = 1 exactly, so q = roundf(x): halfway cases go away from
// zero (126.5 -> 127 and 2.5 -> 3, where round-to-even would give 126, 2).
TEST(GgmlBlocksTest, Q8_0HandComputedUnitScale) {
  std::vector<float> x = {127.0f, -127.0f,     0.5f,    -0.5f,   1.5f, 2.5f,
                          -2.5f,  0.49999997f, 126.5f,  -126.5f, 3.2f, -3.7f,
                          0.0f,   -0.0f,       100.49f, 64.5f};
  for (int j = 0; j < 16; ++j) x.push_back(static_cast<float>(j));
  const std::vector<uint8_t> expected = {
      0x00, 0x3c,  // d = 1.0 in fp16, little endian.
      0x7f, 0x81, 0x01, 0xff, 0x02, 0x03, 0xfd, 0x00, 0x7f, 0x81, 0x03,
      0xfc, 0x00, 0x00, 0x64, 0x41, 0x00, 0x01, 0x02, 0x03, 0x04, 0x05,
      0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f};
  EXPECT_THAT(Quantize(GgmlType::kQ8_0, x), ElementsAreArray(expected));
}

// x[j] = (j - 16) / 16: amax = 1, d = 1/127 = 0.007874016f (fp16 0x2008 =
// 0.0078582...), id = 127 exactly, q[j] = roundf((j - 16) * 7.9375).
TEST(GgmlBlocksTest, Q8_0HandComputedFractionalScale) {
  std::vector<float> x;
  for (int j = 0; j < 32; ++j) x.push_back((j - 16) * 0.0625f);
  const std::vector<uint8_t> expected = {
      0x08, 0x20, 0x81, 0x89, 0x91, 0x99, 0xa1, 0xa9, 0xb1, 0xb9, 0xc0, 0xc8,
      0xd0, 0xd8, 0xe0, 0xe8, 0xf0, 0xf8, 0x00, 0x08, 0x10, 0x18, 0x20, 0x28,
      0x30, 0x38, 0x40, 0x47, 0x4f, 0x57, 0x5f, 0x67, 0x6f, 0x77};
  const std::vector<uint8_t> q = Quantize(GgmlType::kQ8_0, x);
  EXPECT_THAT(q, ElementsAreArray(expected));
  // Dequantized: q * fp16(d).
  const std::vector<float> y = Dequantize(GgmlType::kQ8_0, q, 32);
  const float d = HalfToFloat(0x2008);
  EXPECT_EQ(y[0], -127 * d);
  EXPECT_EQ(y[8], -64 * d);
  EXPECT_EQ(y[16], 0.0f);
  EXPECT_EQ(y[31], 119 * d);
}

// x[0] = -8 has the largest magnitude (x[16] = 8 ties but comes later), so
// d = -8 / -8 = 1 and q = min(15, trunc(x + 8.5)).
TEST(GgmlBlocksTest, Q4_0HandComputedUnitScale) {
  std::vector<float> x = {-8.0f, 7.0f, 0.0f,  0.5f, -0.5f, 1.49f, -3.7f, 2.5f,
                          -7.9f, 6.6f, -0.0f, 3.0f, -1.0f, 0.49f, -6.5f, 4.25f};
  x.push_back(8.0f);  // 16.5 -> 16, clamped to 15.
  for (int j = 17; j < 32; ++j) x.push_back(static_cast<float>(j - 24));
  // q[0..15]  = 0 15 8 9 8 9 4 11 0 15 8 11 7 8 2 12
  // q[16..31] = 15 1 2 3 ... 15
  const std::vector<uint8_t> expected = {0x00, 0x3c, 0xf0, 0x1f, 0x28, 0x39,
                                         0x48, 0x59, 0x64, 0x7b, 0x80, 0x9f,
                                         0xa8, 0xbb, 0xc7, 0xd8, 0xe2, 0xfc};
  const std::vector<uint8_t> q = Quantize(GgmlType::kQ4_0, x);
  EXPECT_THAT(q, ElementsAreArray(expected));
  const std::vector<float> y = Dequantize(GgmlType::kQ4_0, q, 32);
  EXPECT_EQ(y[0], -8.0f);
  EXPECT_EQ(y[1], 7.0f);
  EXPECT_EQ(y[16], 7.0f);  // The clamped one.
  EXPECT_EQ(y[6], -4.0f);
  EXPECT_EQ(y[31], 7.0f);
}

// The largest magnitude is positive (2, first at x[5]; x[20] = -2 ties), so
// d = 2 / -8 = -0.25 (fp16 0xb400), id = -4, q = min(15, trunc(-4x + 8.5)).
TEST(GgmlBlocksTest, Q4_0HandComputedNegativeScale) {
  std::vector<float> x(32, 0.0f);
  x[0] = 0.3f;     // 7.3 -> 7
  x[1] = -0.3f;    // 9.7 -> 9
  x[2] = 0.125f;   // 8.0 -> 8
  x[3] = -0.125f;  // 9.0 -> 9
  x[4] = 0.375f;   // 7.0 -> 7
  x[5] = 2.0f;     // 0.5 -> 0
  x[6] = -0.375f;  // 10.0 -> 10
  x[16] = 1.0f;    // 4.5 -> 4
  x[17] = -1.0f;   // 12.5 -> 12
  x[20] = -2.0f;   // 16.5 -> 16 -> 15
  const std::vector<uint8_t> expected = {0x00, 0xb4, 0x47, 0xc9, 0x88, 0x89,
                                         0xf7, 0x80, 0x8a, 0x88, 0x88, 0x88,
                                         0x88, 0x88, 0x88, 0x88, 0x88, 0x88};
  EXPECT_THAT(Quantize(GgmlType::kQ4_0, x), ElementsAreArray(expected));
}

TEST(GgmlBlocksTest, Q4_0KeepsTheFirstOfEqualMagnitudes) {
  std::vector<float> x(32, 1.0f);
  x[3] = -5.0f;
  x[10] = 5.0f;
  EXPECT_EQ(ScaleBits(Quantize(GgmlType::kQ4_0, x), 0), 0x3900);  // 0.625
  x[3] = 5.0f;
  x[10] = -5.0f;
  EXPECT_EQ(ScaleBits(Quantize(GgmlType::kQ4_0, x), 0), 0xb900);  // -0.625
}

TEST(GgmlBlocksTest, ZeroBlocks) {
  for (const float zero : {0.0f, -0.0f}) {
    const std::vector<float> x(64, zero);
    std::vector<uint8_t> q8_expected(68, 0);  // d = +0, q = 0.
    EXPECT_THAT(Quantize(GgmlType::kQ8_0, x), ElementsAreArray(q8_expected));
    // Q4_0: max stays +0, d = 0 / -8 = -0 (0x8000), every q = 8.
    std::vector<uint8_t> q4_expected;
    for (int b = 0; b < 2; ++b) {
      q4_expected.push_back(0x00);
      q4_expected.push_back(0x80);
      for (int j = 0; j < 16; ++j) q4_expected.push_back(0x88);
    }
    const std::vector<uint8_t> q4 = Quantize(GgmlType::kQ4_0, x);
    EXPECT_THAT(q4, ElementsAreArray(q4_expected));
    for (const float y : Dequantize(GgmlType::kQ4_0, q4, 64)) {
      EXPECT_EQ(y, 0.0f);
    }
  }
}

// Blocks so small that 1/d overflows: llama.cpp converts +-inf and NaN to
// int8_t there; an x86 build writes 0 (cvttss2si gives INT32_MIN, low byte
// 0), and so does the reference here.
TEST(GgmlBlocksTest, TinyBlocksQuantizeLikeX86LlamaCpp) {
  std::vector<float> x(32, 0.0f);
  x[0] = 1e-38f;
  x[1] = -3e-39f;
  x[7] = std::numeric_limits<float>::denorm_min();
  const std::vector<uint8_t> q8 = Quantize(GgmlType::kQ8_0, x);
  EXPECT_THAT(q8, ElementsAreArray(std::vector<uint8_t>(34, 0)));
  const std::vector<uint8_t> q4 = Quantize(GgmlType::kQ4_0, x);
  std::vector<uint8_t> q4_expected(18, 0);
  q4_expected[1] = 0x80;  // d = -1.25e-39 -> fp16 -0.
  EXPECT_THAT(q4, ElementsAreArray(q4_expected));
  // A little larger, 1/d is finite again and the block is ordinary.
  for (float& v : x) v *= 1e4f;
  const std::vector<uint8_t> q8_normal = Quantize(GgmlType::kQ8_0, x);
  EXPECT_EQ(static_cast<int8_t>(q8_normal[2]), 127);
  EXPECT_EQ(static_cast<int8_t>(q8_normal[3]), -38);  // -3e-35/1e-34*127.
}

TEST(GgmlBlocksTest, PlainTypes) {
  const std::vector<float> x = {1.0f, -2.0f, 65504.0f, 1e-8f, 0.1f};
  EXPECT_THAT(Quantize(GgmlType::kF16, x),
              ElementsAreArray({0x00, 0x3c, 0x00, 0xc0, 0xff, 0x7b, 0x00, 0x00,
                                0x66, 0x2e}));
  EXPECT_THAT(Quantize(GgmlType::kBF16, x),
              ElementsAreArray({0x80, 0x3f, 0x00, 0xc0, 0x80, 0x47, 0x2c, 0x32,
                                0xcd, 0x3d}));
  const std::vector<uint8_t> f32 = Quantize(GgmlType::kF32, x);
  ASSERT_EQ(f32.size(), 20u);
  EXPECT_EQ(std::memcmp(f32.data(), x.data(), 20), 0);
  EXPECT_THAT(Dequantize(GgmlType::kF32, f32, 5), ElementsAreArray(x));
}

TEST(GgmlBlocksTest, DequantizeF16AndBf16AllValues) {
  std::vector<uint8_t> bits;
  for (uint32_t h = 0; h <= 0xffffu; ++h) {
    bits.push_back(static_cast<uint8_t>(h));
    bits.push_back(static_cast<uint8_t>(h >> 8));
  }
  const std::vector<float> f16 = Dequantize(GgmlType::kF16, bits, 65536);
  const std::vector<float> bf16 = Dequantize(GgmlType::kBF16, bits, 65536);
  for (uint32_t h = 0; h <= 0xffffu; ++h) {
    ASSERT_EQ(FloatBits(f16[h]), FloatBits(HalfToFloat(h))) << h;
    ASSERT_EQ(FloatBits(bf16[h]), h << 16) << h;
  }
}

// Random data: 64 blocks each of normal data at several scales and of
// heavy-tailed data (Student-t with 1.5 degrees of freedom, and Cauchy,
// clipped to +-1e5 so that the fp16 scales stay finite).
std::vector<float> RandomData(int kind, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal;
  std::student_t_distribution<float> student(1.5f);
  std::cauchy_distribution<float> cauchy;
  std::vector<float> x;
  const float scales[] = {1.0f, 1e-3f, 0.02f, 30.0f};
  for (int b = 0; b < 64; ++b) {
    const float scale = scales[b % 4];
    for (int j = 0; j < 32; ++j) {
      float v =
          kind == 0 ? normal(rng) : (kind == 1 ? student(rng) : cauchy(rng));
      v = std::fmax(-1e5f, std::fmin(1e5f, v * scale));
      x.push_back(v);
    }
  }
  return x;
}

TEST(GgmlBlocksTest, Q8_0ErrorIsHalfAStepPlusScaleRounding) {
  for (int kind = 0; kind < 3; ++kind) {
    const std::vector<float> x = RandomData(kind, 100 + kind);
    const int64_t n = static_cast<int64_t>(x.size());
    const std::vector<uint8_t> q = Quantize(GgmlType::kQ8_0, x);
    const std::vector<float> y = Dequantize(GgmlType::kQ8_0, q, n);
    for (int64_t b = 0; b < n / 32; ++b) {
      float amax = 0.0f;
      for (int j = 0; j < 32; ++j)
        amax = std::fmax(amax, std::fabs(x[b * 32 + j]));
      const float d = amax / 127.0f;
      const float d_half = HalfToFloat(ScaleBits(q, b * 34));
      ASSERT_GT(d_half, 0.0f);
      // fp16 keeps 11 bits; subnormal scales (below 2^-14, the 1e-3 blocks)
      // are exact to 2^-25.
      EXPECT_LE(std::fabs(d - d_half),
                std::fmax(d * 0.0005f, std::ldexp(1.0f, -25)));
      const float bound =
          d * 0.5001f + 127.0f * std::fabs(d - d_half) + amax * 1e-6f;
      for (int j = 0; j < 32; ++j) {
        const int64_t i = b * 32 + j;
        ASSERT_LE(std::fabs(x[i] - y[i]), bound)
            << "kind " << kind << " element " << i << " x " << x[i];
      }
    }
  }
}

TEST(GgmlBlocksTest, Q4_0ErrorIsBoundedByTheBlockMax) {
  for (int kind = 0; kind < 3; ++kind) {
    const std::vector<float> x = RandomData(kind, 200 + kind);
    const int64_t n = static_cast<int64_t>(x.size());
    const std::vector<uint8_t> q = Quantize(GgmlType::kQ4_0, x);
    const std::vector<float> y = Dequantize(GgmlType::kQ4_0, q, n);
    for (int64_t b = 0; b < n / 32; ++b) {
      float amax = 0.0f;
      for (int j = 0; j < 32; ++j)
        amax = std::fmax(amax, std::fabs(x[b * 32 + j]));
      const float step = amax / 8.0f;
      const float step_half = std::fabs(HalfToFloat(ScaleBits(q, b * 18)));
      ASSERT_LE(std::fabs(step - step_half),
                std::fmax(step * 0.0005f, std::ldexp(1.0f, -25)));
      const float scale_error =
          8.0f * std::fabs(step - step_half) + amax * 1e-6f;
      for (int j = 0; j < 32; ++j) {
        const int64_t i = b * 32 + j;
        // Values opposite the block max beyond 7.5 steps clamp to q = 15:
        // up to one step off. All others: half a step.
        const bool clamped =
            std::fabs(x[i]) > 7.5f * step &&
            std::signbit(x[i]) !=
                std::signbit(HalfToFloat(ScaleBits(q, b * 18)) * -1.0f);
        const float bound = (clamped ? 1.0001f : 0.5001f) * step + scale_error;
        ASSERT_LE(std::fabs(x[i] - y[i]), bound)
            << "kind " << kind << " element " << i << " x " << x[i];
        ASSERT_LE(std::fabs(x[i] - y[i]), 1.0001f * step + scale_error);
      }
    }
  }
}

TEST(GgmlBlocksTest, RequantizingTheDequantizedValuesIsStable) {
  for (const GgmlType type :
       {GgmlType::kQ8_0, GgmlType::kQ4_0, GgmlType::kF16, GgmlType::kBF16}) {
    for (int kind = 0; kind < 3; ++kind) {
      const std::vector<float> x = RandomData(kind, 300 + kind);
      const int64_t n = static_cast<int64_t>(x.size());
      const std::vector<uint8_t> q = Quantize(type, x);
      const std::vector<float> y = Dequantize(type, q, n);
      EXPECT_EQ(Quantize(type, y), q) << GgmlTypeName(type) << " kind " << kind;
    }
  }
}

TEST(GgmlBlocksTest, ImportanceIsIgnoredWhereLlamaCppIgnoresIt) {
  const std::vector<float> x = RandomData(0, 7);
  const std::vector<float> weights(x.size(), 2.0f);
  for (const GgmlType type :
       {GgmlType::kF32, GgmlType::kF16, GgmlType::kBF16, GgmlType::kQ8_0}) {
    const std::vector<uint8_t> plain = Quantize(type, x);
    std::vector<uint8_t> weighted(plain.size());
    ASSERT_TRUE(QuantizeRowReference(type, x.data(),
                                     static_cast<int64_t>(x.size()),
                                     weighted.data(), weights.data())
                    .ok());
    EXPECT_EQ(weighted, plain) << GgmlTypeName(type);
  }
  std::vector<uint8_t> out(18 * 64);
  const absl::Status status = QuantizeRowReference(
      GgmlType::kQ4_0, x.data(), 2048, out.data(), weights.data());
  EXPECT_EQ(status.code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(
      std::string(status.message()),
      HasSubstr("importance-weighted q4_0 quantization is not supported"));
}

TEST(GgmlBlocksTest, BadArguments) {
  std::vector<float> x(64, 1.0f);
  std::vector<uint8_t> out(1024);
  absl::Status status =
      QuantizeRowReference(GgmlType::kQ8_0, x.data(), 33, out.data());
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(status.message()),
              HasSubstr("row of 33 elements is not a multiple of the q8_0 "
                        "block size 32"));
  status = DequantizeRowReference(GgmlType::kQ4_0, out.data(), 48, x.data());
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(status.message()), HasSubstr("q4_0 block size 32"));
  status = QuantizeRowReference(GgmlType::kQ4_0, x.data(), -32, out.data());
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(status.message()), HasSubstr("must not be negative"));
  status = QuantizeRowReference(GgmlType::kQ4_K, x.data(), 256, out.data());
  EXPECT_EQ(status.code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(std::string(status.message()),
              HasSubstr("(de)quantization to q4_K is not supported yet"));
  status = DequantizeRowReference(GgmlType::kI8, out.data(), 4, x.data());
  EXPECT_EQ(status.code(), absl::StatusCode::kUnimplemented);
  status = QuantizeRowReference(GgmlType::kQ8_0, x.data(), 32, nullptr);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(status.message()), HasSubstr("null"));
  EXPECT_TRUE(QuantizeRowReference(GgmlType::kQ8_0, nullptr, 0, nullptr).ok());
  EXPECT_TRUE(IsQuantizeSupported(GgmlType::kQ4_0));
  EXPECT_FALSE(IsQuantizeSupported(GgmlType::kQ4_1));
}

struct BadInputCase {
  GgmlType type;
  int64_t index;
  float value;
  const char* message;
};

TEST(GgmlBlocksTest, UnrepresentableInputIsAnError) {
  const float inf = std::numeric_limits<float>::infinity();
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const BadInputCase cases[] = {
      {GgmlType::kQ8_0, 37, nan, "q8_0 cannot represent nan at element 37"},
      {GgmlType::kQ8_0, 0, inf, "q8_0 cannot represent inf at element 0"},
      {GgmlType::kQ4_0, 63, -inf, "q4_0 cannot represent -inf at element 63"},
      {GgmlType::kQ4_0, 5, -nan, "q4_0 cannot represent nan at element 5"},
      {GgmlType::kF32, 2, nan, "f32 cannot represent nan at element 2"},
      {GgmlType::kF16, 9, -inf, "f16 cannot represent -inf at element 9"},
      {GgmlType::kBF16, 1, nan, "bf16 cannot represent nan at element 1"},
      {GgmlType::kF16, 4, 70000.0f,
       "f16 cannot represent 70000 at element 4: it rounds to infinity"},
      {GgmlType::kF16, 4, -65520.0f,
       "f16 cannot represent -65520 at element 4: it rounds to infinity"},
      {GgmlType::kBF16, 3, std::numeric_limits<float>::max(),
       "bf16 cannot represent 3.40282e+38 at element 3: it rounds to "
       "infinity"},
      {GgmlType::kQ8_0, 40, 1e7f,
       "q8_0 cannot represent the block of elements 32..63: its largest "
       "magnitude 1e+07 makes the fp16 scale infinite"},
      {GgmlType::kQ4_0, 33, -6e5f,
       "q4_0 cannot represent the block of elements 32..63: its largest "
       "magnitude 600000 makes the fp16 scale infinite"},
  };
  for (const BadInputCase& c : cases) {
    std::vector<float> x(96, 0.5f);
    x[c.index] = c.value;
    x[95] = nan;  // A later offender is not the one reported.
    std::vector<uint8_t> out(512);
    const absl::Status status =
        QuantizeRowReference(c.type, x.data(), 96, out.data());
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << c.message;
    EXPECT_EQ(status.message(), c.message);
    EXPECT_EQ(status, CheckRepresentable(c.type, x.data(), 96, -1));
  }
  // Just inside the limits: fine.
  std::vector<float> x(32, 1.0f);
  x[0] = 8.0e6f;  // 8e6 / 127 = 62992 < 65520.
  EXPECT_TRUE(CheckRepresentable(GgmlType::kQ8_0, x.data(), 32, -1).ok());
  x[0] = -5.2e5f;  // 65000.
  EXPECT_TRUE(CheckRepresentable(GgmlType::kQ4_0, x.data(), 32, -1).ok());
  x[0] = 65519.0f;
  EXPECT_TRUE(CheckRepresentable(GgmlType::kF16, x.data(), 32, -1).ok());
  // Row positions.
  x[5] = nan;
  EXPECT_EQ(CheckRepresentable(GgmlType::kF16, x.data(), 32, 7).message(),
            "f16 cannot represent nan at row 7, column 5");
  x[5] = 1.0f;
  x[0] = 1e7f;
  EXPECT_EQ(CheckRepresentable(GgmlType::kQ8_0, x.data(), 32, 2).message(),
            "q8_0 cannot represent the block at row 2, columns 0..31: its "
            "largest magnitude 1e+07 makes the fp16 scale infinite");
  EXPECT_EQ(FindNonFinite(x.data(), 32), -1);
  x[31] = -inf;
  EXPECT_EQ(FindNonFinite(x.data(), 32), 31);
}

}  // namespace
}  // namespace quant
