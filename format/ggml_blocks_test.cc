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
  status = QuantizeRowReference(GgmlType::kQ8_K, x.data(), 0, out.data());
  EXPECT_EQ(status.code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(std::string(status.message()),
              HasSubstr("(de)quantization to q8_K is not supported yet"));
  status = QuantizeRowReference(GgmlType::kQ4_K, x.data(), 64, out.data());
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(status.message()), HasSubstr("q4_K block size 256"));
  status = DequantizeRowReference(GgmlType::kI8, out.data(), 4, x.data());
  EXPECT_EQ(status.code(), absl::StatusCode::kUnimplemented);
  status = QuantizeRowReference(GgmlType::kQ8_0, x.data(), 32, nullptr);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(status.message()), HasSubstr("null"));
  EXPECT_TRUE(QuantizeRowReference(GgmlType::kQ8_0, nullptr, 0, nullptr).ok());
  EXPECT_TRUE(IsQuantizeSupported(GgmlType::kQ4_0));
  EXPECT_TRUE(IsQuantizeSupported(GgmlType::kQ6_K));
  EXPECT_FALSE(IsQuantizeSupported(GgmlType::kQ8_K));
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

// ---------------------------------------------------------------------------
// The searched types.

constexpr GgmlType kSearchedTypes[] = {
    GgmlType::kQ4_1, GgmlType::kQ5_0, GgmlType::kQ5_1, GgmlType::kQ2_K,
    GgmlType::kQ3_K, GgmlType::kQ4_K, GgmlType::kQ5_K, GgmlType::kQ6_K};

TEST(GgmlBlocksTest, SearchedLayouts) {
  EXPECT_EQ(offsetof(BlockQ4_1, m), 2u);
  EXPECT_EQ(offsetof(BlockQ4_1, qs), 4u);
  EXPECT_EQ(offsetof(BlockQ5_0, qh), 2u);
  EXPECT_EQ(offsetof(BlockQ5_0, qs), 6u);
  EXPECT_EQ(offsetof(BlockQ5_1, qh), 4u);
  EXPECT_EQ(offsetof(BlockQ5_1, qs), 8u);
  EXPECT_EQ(offsetof(BlockQ2_K, qs), 16u);
  EXPECT_EQ(offsetof(BlockQ2_K, d), 80u);
  EXPECT_EQ(offsetof(BlockQ2_K, dmin), 82u);
  EXPECT_EQ(offsetof(BlockQ3_K, qs), 32u);
  EXPECT_EQ(offsetof(BlockQ3_K, scales), 96u);
  EXPECT_EQ(offsetof(BlockQ3_K, d), 108u);
  EXPECT_EQ(offsetof(BlockQ4_K, scales), 4u);
  EXPECT_EQ(offsetof(BlockQ4_K, qs), 16u);
  EXPECT_EQ(offsetof(BlockQ5_K, qh), 16u);
  EXPECT_EQ(offsetof(BlockQ5_K, qs), 48u);
  EXPECT_EQ(offsetof(BlockQ6_K, qh), 128u);
  EXPECT_EQ(offsetof(BlockQ6_K, scales), 192u);
  EXPECT_EQ(offsetof(BlockQ6_K, d), 208u);
}

TEST(GgmlBlocksTest, ScaleMinPackingRoundTrips) {
  std::mt19937 rng(1);
  for (int trial = 0; trial < 1000; ++trial) {
    uint8_t sc[8], mn[8], packed[12], sc2[8], mn2[8];
    for (int s = 0; s < 8; ++s) sc[s] = rng() % 64, mn[s] = rng() % 64;
    PackScalesMinsK4(sc, mn, packed);
    UnpackScalesMinsK4(packed, sc2, mn2);
    ASSERT_EQ(std::memcmp(sc, sc2, 8), 0);
    ASSERT_EQ(std::memcmp(mn, mn2, 8), 0);
  }
}

// Every sub-block: scale 63 * 2^-8 and min 63 * 2^-8, levels e % 16, so the
// fit is exact: d = dmin = 2^-8 (fp16 0x1c00), every 6-bit scale and min is
// 63 (all packed bytes 0xff), and byte 32 i + l holds levels l % 16 in both
// nibbles.
TEST(GgmlBlocksTest, Q4_KHandComputed) {
  std::vector<float> x(256);
  for (int e = 0; e < 256; ++e) x[e] = 63.0f / 256 * (e % 16) - 63.0f / 256;
  std::vector<uint8_t> expected = {0x00, 0x1c, 0x00, 0x1c};
  for (int k = 0; k < 12; ++k) expected.push_back(0xff);
  for (int b = 0; b < 128; ++b) expected.push_back(0x11 * (b % 16));
  const std::vector<uint8_t> q = Quantize(GgmlType::kQ4_K, x);
  EXPECT_THAT(q, ElementsAreArray(expected));
  EXPECT_THAT(Dequantize(GgmlType::kQ4_K, q, 256), ElementsAreArray(x));
}

// x = -0.125 * v with v = -32 + 4 (e % 16): each sub-block's largest
// magnitude (4.0, at v = -32) takes level -32, so every sub-block scale is
// -0.125 = 2^-10 (fp16 0x1400) * -128 (int8 0x80); stored levels
// L = v + 32 = 4 (e % 16) split into ql (low nibbles of elements e and e + 64
// of each half) and qh (bits 4..5 of elements e, e + 32, e + 64, e + 96).
TEST(GgmlBlocksTest, Q6_KHandComputed) {
  std::vector<float> x(256);
  for (int e = 0; e < 256; ++e) x[e] = -0.125f * (-32 + 4 * (e % 16));
  std::vector<uint8_t> expected;
  for (int h = 0; h < 2; ++h) {
    for (int k = 0; k < 64; ++k) {
      const int level = 4 * (k % 16);
      expected.push_back(static_cast<uint8_t>((level & 15) * 0x11));
    }
  }
  for (int h = 0; h < 2; ++h) {
    for (int l = 0; l < 32; ++l) {
      const int level = 4 * (l % 16);
      expected.push_back(static_cast<uint8_t>((level >> 4) * 0x55));
    }
  }
  for (int s = 0; s < 16; ++s) expected.push_back(0x80);
  expected.push_back(0x00);
  expected.push_back(0x14);
  const std::vector<uint8_t> q = Quantize(GgmlType::kQ6_K, x);
  EXPECT_THAT(q, ElementsAreArray(expected));
  EXPECT_THAT(Dequantize(GgmlType::kQ6_K, q, 256), ElementsAreArray(x));
}

// Q3_K: one sub-block pattern, levels v = -4 + (e % 8) for scale
// d * sc = 2^-6 * -32: x = -0.5 v; d = 2^-6 (fp16 0x2400), every stored
// scale 0 (sc + 32), stored level v + 4 = e % 8: bit 2 in hmask, bits 0..1
// in the 2-bit planes.
TEST(GgmlBlocksTest, Q3_KHandComputed) {
  std::vector<float> x(256);
  for (int e = 0; e < 256; ++e) x[e] = -0.5f * (-4 + e % 8);
  std::vector<uint8_t> expected;
  for (int l = 0; l < 32; ++l) {  // hmask: bit b of byte l is element 32b+l.
    expected.push_back((l % 8) >= 4 ? 0xff : 0x00);
  }
  for (int h = 0; h < 2; ++h) {  // qs: element 128h + 32k + l in bits 2k.
    for (int l = 0; l < 32; ++l) expected.push_back(0x55 * (l % 4));
  }
  for (int k = 0; k < 12; ++k) expected.push_back(0x00);
  expected.push_back(0x00);
  expected.push_back(0x24);
  const std::vector<uint8_t> q = Quantize(GgmlType::kQ3_K, x);
  EXPECT_THAT(q, ElementsAreArray(expected));
  EXPECT_THAT(Dequantize(GgmlType::kQ3_K, q, 256), ElementsAreArray(x));
}

// Q2_K: levels e % 4, scale 15 * 2^-4, min 15 * 2^-5: d = 2^-4 (0x2c00),
// dmin = 2^-5 (0x2800), scale bytes 0xff, qs bytes 0b11100100 = 0xe4 ... no:
// element 128h + 32k + l has level l % 4 in bits 2k, so byte l is
// 0x55 * (l % 4).
TEST(GgmlBlocksTest, Q2_KHandComputed) {
  std::vector<float> x(256);
  for (int e = 0; e < 256; ++e) x[e] = 15.0f / 16 * (e % 4) - 15.0f / 32;
  std::vector<uint8_t> expected(16, 0xff);
  for (int h = 0; h < 2; ++h) {
    for (int l = 0; l < 32; ++l) expected.push_back(0x55 * (l % 4));
  }
  for (uint8_t b : {0x00, 0x2c, 0x00, 0x28}) expected.push_back(b);
  const std::vector<uint8_t> q = Quantize(GgmlType::kQ2_K, x);
  EXPECT_THAT(q, ElementsAreArray(expected));
  EXPECT_THAT(Dequantize(GgmlType::kQ2_K, q, 256), ElementsAreArray(x));
}

// Q5_1: x = q * 0.5 - 3 with q = j (every level 0..31 once): d = 0.5
// (0x3800), m = -3 (0xc200), low nibbles j % 16 (element j) and (j + 16) %
// 16, high bits: elements 16..31 (0xffff0000).
TEST(GgmlBlocksTest, Q5_1HandComputed) {
  std::vector<float> x(32);
  for (int j = 0; j < 32; ++j) x[j] = 0.5f * j - 3.0f;
  std::vector<uint8_t> expected = {0x00, 0x38, 0x00, 0xc2,
                                   0x00, 0x00, 0xff, 0xff};
  for (int j = 0; j < 16; ++j) expected.push_back(0x11 * j);
  const std::vector<uint8_t> q = Quantize(GgmlType::kQ5_1, x);
  EXPECT_THAT(q, ElementsAreArray(expected));
  EXPECT_THAT(Dequantize(GgmlType::kQ5_1, q, 32), ElementsAreArray(x));
}

// Values each type represents exactly, with every sub-block using its
// lowest and highest level (so that the exact fit is the unique best one).
std::vector<float> ExactlyRepresentable(GgmlType type, int blocks,
                                        uint32_t seed) {
  std::mt19937 rng(seed);
  auto uniform = [&](int lo, int hi) {
    return lo + static_cast<int>(rng() % static_cast<uint32_t>(hi - lo + 1));
  };
  struct Shape {
    int block, group;
    bool affine;
    int q_max;        // Affine: levels 0..q_max.
    int q_neg;        // Symmetric: levels -q_neg..q_neg-1.
    int scale_steps;  // Sub-block scale levels (0: one fp16 scale).
  };
  Shape shape{};
  switch (type) {
    case GgmlType::kQ4_0:
      shape = {32, 32, false, 0, 8, 0};
      break;
    case GgmlType::kQ4_1:
      shape = {32, 32, true, 15, 0, 0};
      break;
    case GgmlType::kQ5_0:
      shape = {32, 32, false, 0, 16, 0};
      break;
    case GgmlType::kQ5_1:
      shape = {32, 32, true, 31, 0, 0};
      break;
    case GgmlType::kQ2_K:
      shape = {256, 16, true, 3, 0, 15};
      break;
    case GgmlType::kQ3_K:
      shape = {256, 16, false, 0, 4, 32};
      break;
    case GgmlType::kQ4_K:
      shape = {256, 32, true, 15, 0, 63};
      break;
    case GgmlType::kQ5_K:
      shape = {256, 32, true, 31, 0, 63};
      break;
    case GgmlType::kQ6_K:
      shape = {256, 16, false, 0, 32, 128};
      break;
    default:
      ADD_FAILURE() << "no shape";
      return {};
  }
  std::vector<float> x;
  for (int b = 0; b < blocks; ++b) {
    const float d = std::ldexp(1.0f, uniform(-9, -2)) * (rng() & 1 ? 1 : -1);
    const float dmin = std::ldexp(1.0f, uniform(-9, -2));
    for (int g = 0; g < shape.block / shape.group; ++g) {
      float scale = d, offset = 0;
      if (shape.affine) {
        scale = std::fabs(d);
        if (shape.scale_steps > 0) {
          scale *= g == 0 ? shape.scale_steps : uniform(1, shape.scale_steps);
          offset = -dmin *
                   (g == 0 ? shape.scale_steps : uniform(0, shape.scale_steps));
        } else {
          offset = -dmin * uniform(0, 100);
        }
      } else if (shape.scale_steps > 0) {
        scale *= g == 0
                     ? -shape.scale_steps
                     : uniform(1, shape.scale_steps - 1) * (rng() & 1 ? 1 : -1);
      }
      for (int i = 0; i < shape.group; ++i) {
        int q;
        if (shape.affine) {
          q = i == 0 ? 0 : (i == 1 ? shape.q_max : uniform(0, shape.q_max));
        } else {
          q = i == 0 ? -shape.q_neg : uniform(1 - shape.q_neg, shape.q_neg - 1);
        }
        x.push_back(scale * static_cast<float>(q) + offset);
      }
    }
  }
  return x;
}

TEST(GgmlBlocksTest, ExactlyRepresentableBlocksRoundTripExactly) {
  const std::vector<float> none;
  for (const GgmlType type : kSearchedTypes) {
    const std::vector<float> x = ExactlyRepresentable(type, 9, 40);
    const std::vector<uint8_t> q = Quantize(type, x);
    EXPECT_THAT(Dequantize(type, q, static_cast<int64_t>(x.size())),
                ElementsAreArray(x))
        << GgmlTypeName(type);
  }
  // Q4_0's weighted search too.
  const std::vector<float> x = ExactlyRepresentable(GgmlType::kQ4_0, 9, 41);
  const std::vector<float> weights(x.size(), 1.0f);
  std::vector<uint8_t> q(18 * 9);
  ASSERT_TRUE(QuantizeRowReference(GgmlType::kQ4_0, x.data(), 288, q.data(),
                                   weights.data())
                  .ok());
  EXPECT_THAT(Dequantize(GgmlType::kQ4_0, q, 288), ElementsAreArray(x));
}

double RelativeRmse(const std::vector<float>& x, const std::vector<float>& y) {
  double num = 0, den = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    num +=
        (static_cast<double>(x[i]) - y[i]) * (static_cast<double>(x[i]) - y[i]);
    den += static_cast<double>(x[i]) * x[i];
  }
  return std::sqrt(num / den);
}

// Rows of 7 x 1280 values: normal, and heavy-tailed (Student-t, 3 degrees of
// freedom) with rows at different scales.
std::vector<float> WeightLike(bool heavy, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal;
  std::student_t_distribution<float> student(3.0f);
  std::vector<float> x;
  for (int r = 0; r < 7; ++r) {
    const float scale = std::ldexp(1.0f, -2 * r);
    for (int c = 0; c < 1280; ++c) {
      x.push_back(scale * (heavy ? student(rng) : normal(rng)));
    }
  }
  return x;
}

// Relative RMS error per type, against bounds a little above what the
// quantizers reach (Q4_1, Q5_0, Q5_1: min-max rounding; the k-quants: the
// search, which puts Q4_K's 4.5 bits at Q4_1's 5 bits' error).
TEST(GgmlBlocksTest, SearchedTypesErrorBounds) {
  struct Bound {
    GgmlType type;
    double normal, heavy;
  };
  const Bound bounds[] = {
      {GgmlType::kQ4_1, 0.078, 0.110}, {GgmlType::kQ5_0, 0.042, 0.077},
      {GgmlType::kQ5_1, 0.038, 0.055}, {GgmlType::kQ2_K, 0.272, 0.337},
      {GgmlType::kQ3_K, 0.151, 0.210}, {GgmlType::kQ4_K, 0.072, 0.105},
      {GgmlType::kQ5_K, 0.036, 0.053}, {GgmlType::kQ6_K, 0.017, 0.027},
  };
  for (const Bound& bound : bounds) {
    for (const bool heavy : {false, true}) {
      const std::vector<float> x = WeightLike(heavy, 77);
      const std::vector<float> y = Dequantize(
          bound.type, Quantize(bound.type, x), static_cast<int64_t>(x.size()));
      const double error = RelativeRmse(x, y);
      EXPECT_LT(error, heavy ? bound.heavy : bound.normal)
          << GgmlTypeName(bound.type) << (heavy ? " heavy" : " normal");
    }
  }
}

// Requantizing dequantized values: exactly stable for the min-max types; for
// the k-quants, whose sub-block offsets live on the super-block's 4- or 6-bit
// min grid, the fit cannot always recover the same split between offset and
// levels, so values may move, but by a small fraction of the first pass's
// error and without losing accuracy.
TEST(GgmlBlocksTest, SearchedTypesRequantizeStably) {
  for (const GgmlType type : kSearchedTypes) {
    const std::vector<float> x = WeightLike(true, 78);
    const int64_t n = static_cast<int64_t>(x.size());
    const std::vector<uint8_t> q = Quantize(type, x);
    const std::vector<float> y = Dequantize(type, q, n);
    const std::vector<uint8_t> q2 = Quantize(type, y);
    const std::vector<float> z = Dequantize(type, q2, n);
    if (GetGgmlTypeTraits(type).block_size == 32) {
      EXPECT_EQ(q2, q) << GgmlTypeName(type);
      continue;
    }
    const double first_error = RelativeRmse(x, y);
    EXPECT_LT(RelativeRmse(y, z), 0.3 * first_error) << GgmlTypeName(type);
    EXPECT_LT(RelativeRmse(x, z), 1.05 * first_error) << GgmlTypeName(type);
  }
}

// A block's grid reproduces its dequantization exactly, and writing its
// own levels back reproduces its bytes; other levels written into it
// dequantize to their grid values, with the scales untouched.
TEST(GgmlBlocksTest, BlockGridsMatchTheDequantizers) {
  std::mt19937 rng(80);
  for (const GgmlType type :
       {GgmlType::kQ8_0, GgmlType::kQ4_0, GgmlType::kQ4_1, GgmlType::kQ5_0,
        GgmlType::kQ5_1, GgmlType::kQ2_K, GgmlType::kQ3_K, GgmlType::kQ4_K,
        GgmlType::kQ5_K, GgmlType::kQ6_K}) {
    const GgmlTypeTraits& traits = GetGgmlTypeTraits(type);
    const std::vector<float> x = WeightLike(true, 81);
    const int64_t n = static_cast<int64_t>(x.size());
    const std::vector<uint8_t> q = Quantize(type, x);
    const std::vector<float> y = Dequantize(type, q, n);
    const BlockLevelRange range = GetBlockLevelRange(type);
    ASSERT_LT(range.min, range.max) << traits.name;
    std::uniform_int_distribution<int> any_level(range.min, range.max);
    for (int64_t b = 0; b < n / traits.block_size; ++b) {
      const uint8_t* block = q.data() + b * traits.type_size;
      BlockGrid grid;
      ASSERT_TRUE(GetBlockGrid(type, block, &grid)) << traits.name;
      for (int64_t e = 0; e < traits.block_size; ++e) {
        ASSERT_GE(grid.level[e], range.min);
        ASSERT_LE(grid.level[e], range.max);
        const float value =
            grid.step[e] * static_cast<float>(grid.level[e]) + grid.offset[e];
        ASSERT_EQ(value, y[b * traits.block_size + e])
            << traits.name << " block " << b << " element " << e;
      }
      std::vector<uint8_t> copy(block, block + traits.type_size);
      ASSERT_TRUE(SetBlockLevels(type, grid.level, copy.data()));
      EXPECT_TRUE(std::equal(copy.begin(), copy.end(), block)) << traits.name;

      int levels[kQkK];
      for (int64_t e = 0; e < traits.block_size; ++e)
        levels[e] = any_level(rng);
      ASSERT_TRUE(SetBlockLevels(type, levels, copy.data()));
      float z[kQkK];
      GetBlockDequantizer(type)(copy.data(), z);
      BlockGrid rewritten;
      ASSERT_TRUE(GetBlockGrid(type, copy.data(), &rewritten));
      for (int64_t e = 0; e < traits.block_size; ++e) {
        ASSERT_EQ(rewritten.level[e], levels[e]) << traits.name << " " << e;
        ASSERT_EQ(rewritten.step[e], grid.step[e]);
        ASSERT_EQ(rewritten.offset[e], grid.offset[e]);
        ASSERT_EQ(z[e],
                  grid.step[e] * static_cast<float>(levels[e]) + grid.offset[e])
            << traits.name << " element " << e;
      }
    }
  }
  EXPECT_LT(GetBlockLevelRange(GgmlType::kF16).max,
            GetBlockLevelRange(GgmlType::kF16).min);
  BlockGrid grid;
  uint8_t block[4] = {};
  EXPECT_FALSE(GetBlockGrid(GgmlType::kF32, block, &grid));
}

// Refitting a sub-block to values that moved (scaled by 1.6 here) lowers
// its weighted error, never raises it, and leaves the rest of the block.
TEST(GgmlBlocksTest, RefitSubBlockFollowsMovedValues) {
  std::mt19937 rng(82);
  std::uniform_real_distribution<float> weight(0.5f, 2.0f);
  for (const GgmlType type : {GgmlType::kQ2_K, GgmlType::kQ3_K, GgmlType::kQ4_K,
                              GgmlType::kQ5_K, GgmlType::kQ6_K}) {
    const GgmlTypeTraits& traits = GetGgmlTypeTraits(type);
    const int n = SubBlockSize(type);
    ASSERT_GT(n, 0);
    const std::vector<float> x = WeightLike(false, 83);
    std::vector<uint8_t> q = Quantize(type, x);
    const std::vector<uint8_t> before(q.begin(), q.begin() + traits.type_size);
    const int s = 3;
    std::vector<float> moved(x.begin() + s * n, x.begin() + (s + 1) * n);
    for (float& v : moved) v *= 1.6f;
    std::vector<float> w(n);
    for (float& v : w) v = weight(rng);
    // Weighted error of the moved values on a block's grid of sub-block s.
    auto error = [&](const uint8_t* block) {
      BlockGrid grid;
      EXPECT_TRUE(GetBlockGrid(type, block, &grid));
      double total = 0;
      for (int i = 0; i < n; ++i) {
        const float step = grid.step[s * n + i];
        const float offset = grid.offset[s * n + i];
        const float level =
            step != 0 ? std::min<float>(
                            std::max<float>(
                                std::nearbyint((moved[i] - offset) / step),
                                grid.range.min),
                            grid.range.max)
                      : 0.0f;
        const double e = moved[i] - (step * level + offset);
        total += w[i] * e * e;
      }
      return total;
    };
    const double old_error = error(before.data());
    ASSERT_TRUE(RefitSubBlock(type, q.data(), s, moved.data(), w.data()));
    const double new_error = error(q.data());
    EXPECT_LT(new_error, 0.8 * old_error) << traits.name;
    // Other sub-blocks keep their values.
    BlockGrid a, b;
    GetBlockGrid(type, before.data(), &a);
    GetBlockGrid(type, q.data(), &b);
    for (int e = 0; e < kQkK; ++e) {
      if (e / n == s) continue;
      ASSERT_EQ(a.step[e], b.step[e]) << traits.name << " " << e;
      ASSERT_EQ(a.offset[e], b.offset[e]) << traits.name << " " << e;
      ASSERT_EQ(a.level[e], b.level[e]) << traits.name << " " << e;
    }
    // Values it already fits are kept.
    std::vector<uint8_t> again = q;
    std::vector<float> on_grid(n);
    for (int i = 0; i < n; ++i) {
      on_grid[i] = b.step[s * n + i] * static_cast<float>(b.level[s * n + i]) +
                   b.offset[s * n + i];
    }
    ASSERT_TRUE(RefitSubBlock(type, again.data(), s, on_grid.data(), w.data()));
    EXPECT_TRUE(again == q) << traits.name;
  }
  uint8_t block[kMaxBlockBytes] = {};
  const float x[32] = {}, w[32] = {};
  EXPECT_FALSE(RefitSubBlock(GgmlType::kQ4_0, block, 0, x, w));
  EXPECT_FALSE(RefitSubBlock(GgmlType::kQ4_K, block, 8, x, w));
}

// Heavy importance on some columns lowers their error.
TEST(GgmlBlocksTest, ImportanceLowersTheErrorWhereItIsHigh) {
  const std::vector<float> x = WeightLike(false, 79);
  const int64_t n = static_cast<int64_t>(x.size());
  std::vector<float> importance(n, 1.0f);
  for (int64_t i = 0; i < n; i += 5) importance[i] = 100.0f;
  for (const GgmlType type :
       {GgmlType::kQ4_0, GgmlType::kQ4_1, GgmlType::kQ5_0, GgmlType::kQ5_1,
        GgmlType::kQ2_K, GgmlType::kQ3_K, GgmlType::kQ4_K, GgmlType::kQ5_K,
        GgmlType::kQ6_K}) {
    std::vector<uint8_t> weighted(*GgmlRowBytes(type, n));
    ASSERT_TRUE(QuantizeRowReference(type, x.data(), n, weighted.data(),
                                     importance.data())
                    .ok());
    const std::vector<float> plain = Dequantize(type, Quantize(type, x), n);
    const std::vector<float> focused = Dequantize(type, weighted, n);
    double plain_error = 0, focused_error = 0;
    for (int64_t i = 0; i < n; i += 5) {
      plain_error += (x[i] - plain[i]) * (x[i] - plain[i]);
      focused_error += (x[i] - focused[i]) * (x[i] - focused[i]);
    }
    EXPECT_LT(focused_error, 0.8 * plain_error) << GgmlTypeName(type);
  }
}

TEST(GgmlBlocksTest, BadImportanceWeights) {
  std::vector<float> x(32, 1.0f), weights(32, 1.0f);
  std::vector<uint8_t> out(64);
  weights[7] = -1.0f;
  absl::Status status = QuantizeRowReference(GgmlType::kQ5_0, x.data(), 32,
                                             out.data(), weights.data());
  EXPECT_EQ(status.message(),
            "importance weight 7 is -1; weights must be finite and "
            "non-negative");
  weights[7] = std::numeric_limits<float>::infinity();
  EXPECT_EQ(QuantizeRowReference(GgmlType::kQ5_0, x.data(), 32, out.data(),
                                 weights.data())
                .code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(GgmlBlocksTest, SearchedTypesRejectWhatTheyCannotRepresent) {
  std::vector<float> x(256, 1.0f);
  x[40] = std::numeric_limits<float>::quiet_NaN();
  std::vector<uint8_t> out(256);
  absl::Status status =
      QuantizeRowReference(GgmlType::kQ4_K, x.data(), 256, out.data());
  EXPECT_EQ(status.message(), "q4_K cannot represent nan at element 40");
  x[40] = -1e5f;  // Q5_1's fp16 offset overflows.
  status = QuantizeRowReference(GgmlType::kQ5_1, x.data(), 64, out.data());
  EXPECT_EQ(status.message(),
            "q5_1 cannot represent the block of elements 32..63: its largest "
            "magnitude 100000 makes the fp16 scale infinite");
  x[40] = 3e38f;  // Every k-quant's d overflows.
  for (const GgmlType type :
       {GgmlType::kQ2_K, GgmlType::kQ3_K, GgmlType::kQ4_K, GgmlType::kQ6_K}) {
    status = QuantizeRowReference(type, x.data(), 256, out.data());
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(status.message()),
                HasSubstr("block of elements 0..255"));
  }
}

}  // namespace
}  // namespace quant
