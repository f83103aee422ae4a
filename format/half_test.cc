#include "format/half.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "gtest/gtest.h"

namespace quant {
namespace {

bool IsHalfNan(uint32_t h) { return (h & 0x7fffu) > 0x7c00u; }

// Every finite half value, as doubles, ascending, with its bits.
struct HalfTable {
  std::vector<double> values;
  std::vector<uint16_t> bits;
};

HalfTable FiniteNonNegativeHalves() {
  HalfTable table;
  for (uint32_t h = 0; h <= 0x7bffu; ++h) {  // +0 .. 65504, ascending.
    // Independent of HalfToFloat: value = significand * 2^(exponent - 25).
    const uint32_t exponent = h >> 10;
    const uint32_t mantissa = h & 0x3ffu;
    const double value =
        exponent == 0
            ? std::ldexp(mantissa, -24)
            : std::ldexp(1024 + mantissa, static_cast<int>(exponent) - 25);
    table.values.push_back(value);
    table.bits.push_back(static_cast<uint16_t>(h));
  }
  return table;
}

// Nearest half to `f` by exhaustive search over the table, ties to even,
// with IEEE overflow (>= 65520 -> inf). NaN handled by the caller.
uint16_t OracleFloatToHalf(float f, const HalfTable& table) {
  const uint16_t sign = std::signbit(f) ? 0x8000 : 0;
  const double a = std::fabs(static_cast<double>(f));
  if (a >= 65520.0) return sign | 0x7c00;
  const auto it = std::lower_bound(table.values.begin(), table.values.end(), a);
  const size_t hi = static_cast<size_t>(it - table.values.begin());
  if (hi == 0) return sign | table.bits[0];
  if (hi == table.values.size()) return sign | table.bits.back();
  const size_t lo = hi - 1;
  const double below = a - table.values[lo];
  const double above = table.values[hi] - a;
  size_t pick;
  if (below < above) {
    pick = lo;
  } else if (above < below) {
    pick = hi;
  } else {
    pick = (table.bits[lo] & 1u) == 0 ? lo : hi;
  }
  return sign | table.bits[pick];
}

TEST(HalfTest, KnownValues) {
  EXPECT_EQ(HalfToFloat(0x3c00), 1.0f);
  EXPECT_EQ(HalfToFloat(0xc000), -2.0f);
  EXPECT_EQ(HalfToFloat(0x3555), 0.333251953125f);
  EXPECT_EQ(HalfToFloat(0x7bff), 65504.0f);
  EXPECT_EQ(HalfToFloat(0x0400), std::ldexp(1.0f, -14));     // Smallest normal.
  EXPECT_EQ(HalfToFloat(0x03ff), std::ldexp(1023.0f, -24));  // Largest sub.
  EXPECT_EQ(HalfToFloat(0x0001), std::ldexp(1.0f, -24));
  EXPECT_EQ(HalfToFloat(0x7c00), std::numeric_limits<float>::infinity());
  EXPECT_EQ(HalfToFloat(0xfc00), -std::numeric_limits<float>::infinity());
  EXPECT_EQ(FloatBits(HalfToFloat(0x8000)), 0x80000000u);  // -0 keeps sign.
  EXPECT_EQ(FloatToHalf(1.0f), 0x3c00);
  EXPECT_EQ(FloatToHalf(-2.0f), 0xc000);
  EXPECT_EQ(FloatToHalf(0.1f), 0x2e66);
  EXPECT_EQ(FloatToHalf(-0.0f), 0x8000);
}

TEST(HalfTest, ExhaustiveHalfToFloatToHalfRoundTrip) {
  int nans = 0;
  for (uint32_t h = 0; h <= 0xffffu; ++h) {
    const float f = HalfToFloat(static_cast<uint16_t>(h));
    if (IsHalfNan(h)) {
      ++nans;
      ASSERT_TRUE(std::isnan(f)) << std::hex << h;
      // Quiet, payload and sign kept (as ggml's fp16 -> fp32 and F16C do).
      EXPECT_EQ(FloatBits(f),
                ((h & 0x8000u) << 16) | 0x7fc00000u | ((h & 0x3ffu) << 13))
          << std::hex << h;
      EXPECT_EQ(FloatToHalf(f), (h & 0x8000u) | 0x7e00u) << std::hex << h;
      continue;
    }
    ASSERT_EQ(FloatToHalf(f), h) << std::hex << h;
  }
  EXPECT_EQ(nans, 2 * 1023);
}

TEST(HalfTest, HalfToFloatIsExactAndMonotonic) {
  const HalfTable table = FiniteNonNegativeHalves();
  for (size_t i = 0; i < table.bits.size(); ++i) {
    ASSERT_EQ(static_cast<double>(HalfToFloat(table.bits[i])), table.values[i])
        << std::hex << table.bits[i];
    ASSERT_EQ(static_cast<double>(HalfToFloat(table.bits[i] | 0x8000)),
              -table.values[i]);
    if (i > 0) {
      ASSERT_LT(table.values[i - 1], table.values[i]);
    }
  }
}

// Every midpoint between neighbouring halves (normal, subnormal, and across
// the boundary) goes to the even one; a float ulp either side decides.
TEST(HalfTest, FloatToHalfRoundsHalfwayToEven) {
  const HalfTable table = FiniteNonNegativeHalves();
  for (size_t i = 0; i + 1 < table.bits.size(); ++i) {
    const double mid_exact = (table.values[i] + table.values[i + 1]) / 2;
    const float mid = static_cast<float>(mid_exact);
    ASSERT_EQ(static_cast<double>(mid), mid_exact);  // Representable.
    const uint16_t lo = table.bits[i];
    const uint16_t hi = table.bits[i + 1];
    const uint16_t even = (lo & 1u) == 0 ? lo : hi;
    ASSERT_EQ(FloatToHalf(mid), even) << "midpoint of " << std::hex << lo;
    ASSERT_EQ(FloatToHalf(-mid), even | 0x8000);
    ASSERT_EQ(FloatToHalf(std::nextafter(mid, 0.0f)), lo);
    ASSERT_EQ(FloatToHalf(std::nextafter(mid, 1e9f)), hi);
  }
  EXPECT_EQ(FloatToHalf(1.0f + std::ldexp(1.0f, -11)), 0x3c00);  // To even.
  EXPECT_EQ(FloatToHalf(1.0f + 3 * std::ldexp(1.0f, -11)), 0x3c02);
}

TEST(HalfTest, FloatToHalfOverflowsToInfinity) {
  const float inf = std::numeric_limits<float>::infinity();
  EXPECT_EQ(FloatToHalf(65504.0f), 0x7bff);
  EXPECT_EQ(FloatToHalf(65519.996f), 0x7bff);  // Below the midpoint.
  EXPECT_EQ(FloatToHalf(65520.0f), 0x7c00);    // Midpoint: ties to even = inf.
  EXPECT_EQ(FloatToHalf(-65520.0f), 0xfc00);
  EXPECT_EQ(FloatToHalf(1e10f), 0x7c00);
  EXPECT_EQ(FloatToHalf(std::numeric_limits<float>::max()), 0x7c00);
  EXPECT_EQ(FloatToHalf(-std::numeric_limits<float>::max()), 0xfc00);
  EXPECT_EQ(FloatToHalf(inf), 0x7c00);
  EXPECT_EQ(FloatToHalf(-inf), 0xfc00);
  EXPECT_EQ(FloatToHalf(std::numeric_limits<float>::quiet_NaN()), 0x7e00);
  EXPECT_EQ(FloatToHalf(-std::numeric_limits<float>::quiet_NaN()), 0xfe00);
  EXPECT_EQ(FloatToHalf(BitsToFloat(0x7f800001u)), 0x7e00);  // sNaN, tiny
                                                             // payload.
}

TEST(HalfTest, FloatToHalfSubnormals) {
  EXPECT_EQ(FloatToHalf(std::ldexp(1.0f, -24)), 0x0001);
  EXPECT_EQ(FloatToHalf(std::ldexp(1.0f, -25)), 0x0000);  // Tie to even (0).
  EXPECT_EQ(FloatToHalf(-std::ldexp(1.0f, -25)), 0x8000);
  EXPECT_EQ(FloatToHalf(std::nextafter(std::ldexp(1.0f, -25), 1.0f)), 0x0001);
  EXPECT_EQ(FloatToHalf(3 * std::ldexp(1.0f, -25)), 0x0002);  // 1.5 -> 2.
  EXPECT_EQ(FloatToHalf(5 * std::ldexp(1.0f, -25)), 0x0002);  // 2.5 -> 2.
  EXPECT_EQ(FloatToHalf(std::ldexp(1023.0f, -24)), 0x03ff);
  EXPECT_EQ(FloatToHalf(std::ldexp(1023.5f, -24)), 0x0400);  // Up to normal.
  EXPECT_EQ(FloatToHalf(std::ldexp(1.0f, -30)), 0x0000);
  EXPECT_EQ(FloatToHalf(std::numeric_limits<float>::denorm_min()), 0x0000);
  EXPECT_EQ(FloatToHalf(-std::numeric_limits<float>::denorm_min()), 0x8000);
}

// Against the exhaustive-search oracle on a spread of float bit patterns
// covering every exponent (and each pattern's neighbours).
TEST(HalfTest, FloatToHalfMatchesNearestEvenOracle) {
  const HalfTable table = FiniteNonNegativeHalves();
  int64_t checked = 0;
  for (uint64_t base = 0; base < (1ull << 32); base += 65521) {
    for (uint32_t delta = 0; delta < 3; ++delta) {
      const uint32_t u = static_cast<uint32_t>(base + delta);
      const float f = BitsToFloat(u);
      if (std::isnan(f)) continue;
      ASSERT_EQ(FloatToHalf(f), OracleFloatToHalf(f, table))
          << std::hex << "float bits " << u;
      ++checked;
    }
  }
  EXPECT_GT(checked, 190000);
}

TEST(Bf16Test, ExhaustiveRoundTrip) {
  for (uint32_t h = 0; h <= 0xffffu; ++h) {
    const float f = Bf16ToFloat(static_cast<uint16_t>(h));
    ASSERT_EQ(FloatBits(f), h << 16);
    if ((h & 0x7fffu) > 0x7f80u) {  // NaN: stays NaN, made quiet.
      ASSERT_EQ(FloatToBf16(f), h | 0x40u) << std::hex << h;
    } else {
      ASSERT_EQ(FloatToBf16(f), h) << std::hex << h;
    }
  }
}

TEST(Bf16Test, RoundsToNearestEven) {
  EXPECT_EQ(FloatToBf16(BitsToFloat(0x3f808000u)), 0x3f80);  // Tie, even.
  EXPECT_EQ(FloatToBf16(BitsToFloat(0x3f818000u)), 0x3f82);  // Tie, odd: up.
  EXPECT_EQ(FloatToBf16(BitsToFloat(0x3f807fffu)), 0x3f80);
  EXPECT_EQ(FloatToBf16(BitsToFloat(0x3f808001u)), 0x3f81);
  EXPECT_EQ(FloatToBf16(BitsToFloat(0xbf818000u)), 0xbf82);
  EXPECT_EQ(FloatToBf16(BitsToFloat(0x00008000u)), 0x0000);  // Subnormal tie.
  EXPECT_EQ(FloatToBf16(BitsToFloat(0x00018000u)), 0x0002);
  EXPECT_EQ(FloatToBf16(BitsToFloat(0x007fffffu)), 0x0080);  // To normal.
  // Overflow rounds to infinity; infinities stay.
  EXPECT_EQ(FloatToBf16(std::numeric_limits<float>::max()), 0x7f80);
  EXPECT_EQ(FloatToBf16(BitsToFloat(0x7f7f7fffu)), 0x7f7f);
  EXPECT_EQ(FloatToBf16(std::numeric_limits<float>::infinity()), 0x7f80);
  EXPECT_EQ(FloatToBf16(-std::numeric_limits<float>::infinity()), 0xff80);
  // Sampled against the definition: of the two bf16 neighbours, the nearer;
  // on a tie, the even one.
  for (uint64_t u64 = 0; u64 < (1ull << 32); u64 += 40009) {
    const uint32_t u = static_cast<uint32_t>(u64);
    const float f = BitsToFloat(u);
    if (std::isnan(f) || std::isinf(f)) continue;
    const uint32_t down = u >> 16;
    const double low = Bf16ToFloat(static_cast<uint16_t>(down));
    const double high = (down & 0x7fffu) == 0x7f7fu
                            ? std::ldexp(std::copysign(1.0, f), 128)
                            : Bf16ToFloat(static_cast<uint16_t>(down + 1));
    const double below = std::fabs(f - low);
    const double above = std::fabs(high - f);
    const uint32_t expected =
        below < above
            ? down
            : (above < below ? down + 1 : ((down & 1u) ? down + 1 : down));
    ASSERT_EQ(FloatToBf16(f), expected) << std::hex << u;
  }
}

TEST(Bf16Test, NanStaysNan) {
  for (const uint32_t bits :
       {0x7f800001u, 0x7fc00000u, 0x7fffffffu, 0xff800001u, 0xffffffffu,
        0x7f80ffffu, 0x7f810000u}) {
    const uint16_t h = FloatToBf16(BitsToFloat(bits));
    EXPECT_TRUE(std::isnan(Bf16ToFloat(h))) << std::hex << bits;
    EXPECT_EQ(h & 0x8000u, (bits >> 16) & 0x8000u) << std::hex << bits;
  }
}

}  // namespace
}  // namespace quant
