// IEEE binary16 and bfloat16 <-> float conversions, round to nearest even.
// Inline because every tensor element passes through them.
#ifndef FORMAT_HALF_H_
#define FORMAT_HALF_H_

#include <cstdint>
#include <cstring>

namespace quant {

inline uint32_t FloatBits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return u;
}

inline float BitsToFloat(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

inline float Bf16ToFloat(uint16_t h) {
  return BitsToFloat(static_cast<uint32_t>(h) << 16);
}

inline uint16_t FloatToBf16(float f) {
  const uint32_t u = FloatBits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) {
    return static_cast<uint16_t>((u >> 16) | 0x40);  // Quiet NaN, keep sign.
  }
  const uint32_t rounding = 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>((u + rounding) >> 16);
}

inline float HalfToFloat(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exponent = (h >> 10) & 0x1fu;
  uint32_t mantissa = h & 0x3ffu;
  if (exponent == 0x1f) {  // Inf, or NaN: made quiet, as ggml and F16C do.
    const uint32_t quiet = mantissa != 0 ? 0x400000u : 0u;
    return BitsToFloat(sign | 0x7f800000u | (mantissa << 13) | quiet);
  }
  if (exponent != 0) {
    return BitsToFloat(sign | ((exponent + 112u) << 23) | (mantissa << 13));
  }
  if (mantissa == 0) return BitsToFloat(sign);
  // Subnormal half: value = mantissa * 2^-24.
  const float magnitude = static_cast<float>(mantissa) * 5.9604644775390625e-8f;
  return sign ? -magnitude : magnitude;
}

// Whether IEEE half bits `h` are finite (not inf or NaN).
inline bool IsFiniteHalf(uint16_t h) { return (h & 0x7fffu) < 0x7c00u; }

inline uint16_t FloatToHalf(float f) {
  const uint32_t u = FloatBits(f);
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  const uint32_t abs = u & 0x7fffffffu;
  if (abs > 0x7f800000u) return sign | 0x7e00u;  // NaN.
  if (abs >= 0x477ff000u)
    return sign | 0x7c00u;   // Overflow (after rounding) or Inf.
  if (abs >= 0x38800000u) {  // Normal half range.
    const uint32_t rounding = 0xfffu + ((abs >> 13) & 1u);
    return sign | static_cast<uint16_t>((abs - 0x38000000u + rounding) >> 13);
  }
  if (abs < 0x33000000u) return sign;  // Rounds to zero (< 2^-25).
  // Subnormal half: shift the full mantissa into place with round to even.
  const uint32_t exponent = abs >> 23;
  const uint32_t mantissa = (abs & 0x7fffffu) | 0x800000u;
  const uint32_t shift = 126u - exponent;  // 14..24.
  const uint32_t half_mantissa = mantissa >> shift;
  const uint32_t remainder = mantissa & ((1u << shift) - 1u);
  const uint32_t halfway = 1u << (shift - 1u);
  uint32_t result = half_mantissa;
  if (remainder > halfway || (remainder == halfway && (half_mantissa & 1u))) {
    ++result;
  }
  return sign | static_cast<uint16_t>(result);
}

}  // namespace quant

#endif  // FORMAT_HALF_H_
