#include "kernels/cpu/quantize_rows.h"

#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstring>
#include <limits>
#include <type_traits>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "format/ggml_blocks.h"
#include "format/half.h"
#include "format/scale_fit.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define QS_HAVE_X86 1
#define QS_TARGET_AVX2 __attribute__((target("avx2,f16c")))
#else
#define QS_HAVE_X86 0
#endif

namespace quant {
namespace {

// A kernel handles `units` consecutive units of one row: blocks for block
// types, elements for plain ones. Quantize kernels return false when their
// input holds something the type cannot represent (see CheckRepresentable;
// the caller then finds and reports the first one); `importance` points at
// the weights of the first unit's columns, or is null.
using QuantizeKernel = bool (*)(const float* src, int64_t units, uint8_t* dst,
                                const float* importance);
using DequantizeKernel = void (*)(const uint8_t* src, int64_t units,
                                  float* dst);

// ---------------------------------------------------------------------------
// Scalar kernels: the reference block functions.

bool QuantizeF32Scalar(const float* src, int64_t n, uint8_t* dst,
                       const float*) {
  std::memcpy(dst, src, static_cast<size_t>(n) * sizeof(float));
  return FindNonFinite(src, n) < 0;
}

bool QuantizeF16Scalar(const float* src, int64_t n, uint8_t* dst,
                       const float*) {
  bool ok = true;
  for (int64_t i = 0; i < n; ++i) {
    const uint16_t h = FloatToHalf(src[i]);
    ok = ok && IsFiniteHalf(h);
    std::memcpy(dst + 2 * i, &h, sizeof(h));
  }
  return ok;
}

bool QuantizeBf16Scalar(const float* src, int64_t n, uint8_t* dst,
                        const float*) {
  bool ok = true;
  for (int64_t i = 0; i < n; ++i) {
    const uint16_t h = FloatToBf16(src[i]);
    ok = ok && (h & 0x7fffu) < 0x7f80u;
    std::memcpy(dst + 2 * i, &h, sizeof(h));
  }
  return ok;
}

template <GgmlType type, typename Block, int64_t kBlockElements,
          void (*kQuantize)(const float*, Block*)>
bool QuantizeBlocksScalar(const float* src, int64_t blocks, uint8_t* dst,
                          const float*) {
  if (!CheckRepresentable(type, src, blocks * kBlockElements, 0).ok()) {
    return false;
  }
  for (int64_t i = 0; i < blocks; ++i) {
    Block block;
    kQuantize(src + i * kBlockElements, &block);
    std::memcpy(dst + i * sizeof(Block), &block, sizeof(Block));
  }
  return true;
}

// The searched block types (and Q4_0 with importance weights): the reference
// block functions, which do their own checks.
template <GgmlType type>
bool QuantizeSearchedScalar(const float* src, int64_t blocks, uint8_t* dst,
                            const float* importance) {
  const BlockQuantizeFn quantize =
      GetBlockQuantizer(type, importance != nullptr);
  const GgmlTypeTraits& traits = GetGgmlTypeTraits(type);
  bool ok = true;
  for (int64_t i = 0; i < blocks; ++i) {
    const int64_t first = i * traits.block_size;
    ok &= quantize(src + first,
                   importance == nullptr ? nullptr : importance + first,
                   dst + i * traits.type_size);
  }
  return ok;
}

template <GgmlType type>
void DequantizeBlocksScalar(const uint8_t* src, int64_t blocks, float* dst) {
  const BlockDequantizeFn dequantize = GetBlockDequantizer(type);
  const GgmlTypeTraits& traits = GetGgmlTypeTraits(type);
  for (int64_t i = 0; i < blocks; ++i) {
    dequantize(src + i * traits.type_size, dst + i * traits.block_size);
  }
}

void DequantizeF32Scalar(const uint8_t* src, int64_t n, float* dst) {
  std::memcpy(dst, src, static_cast<size_t>(n) * sizeof(float));
}

void DequantizeF16Scalar(const uint8_t* src, int64_t n, float* dst) {
  for (int64_t i = 0; i < n; ++i) {
    uint16_t h;
    std::memcpy(&h, src + 2 * i, sizeof(h));
    dst[i] = HalfToFloat(h);
  }
}

void DequantizeBf16Scalar(const uint8_t* src, int64_t n, float* dst) {
  for (int64_t i = 0; i < n; ++i) {
    uint16_t h;
    std::memcpy(&h, src + 2 * i, sizeof(h));
    dst[i] = Bf16ToFloat(h);
  }
}

// ---------------------------------------------------------------------------
// AVX2 + F16C kernels. Each step is the same IEEE operation the reference
// does (no FMA contraction: the multiply and the add stay two roundings), and
// the float -> int conversions use cvttps2dq, whose out-of-range result
// (INT32_MIN) is what the reference emulates.

#if QS_HAVE_X86

QS_TARGET_AVX2 inline uint32_t HorizontalMaxU32(__m256i v) {
  __m128i m =
      _mm_max_epu32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  m = _mm_max_epu32(m, _mm_shuffle_epi32(m, _MM_SHUFFLE(1, 0, 3, 2)));
  m = _mm_max_epu32(m, _mm_shuffle_epi32(m, _MM_SHUFFLE(2, 3, 0, 1)));
  return static_cast<uint32_t>(_mm_cvtsi128_si32(m));
}

// roundf(): to nearest, halfway cases away from zero. NaN and +-inf pass
// through (and then convert to INT32_MIN, as in the reference).
QS_TARGET_AVX2 inline __m256 RoundHalfAwayFromZero(__m256 v) {
  const __m256 sign_mask = _mm256_set1_ps(-0.0f);
  const __m256 sign = _mm256_and_ps(v, sign_mask);
  const __m256 magnitude = _mm256_andnot_ps(sign_mask, v);
  __m256 t = _mm256_round_ps(magnitude, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
  const __m256 fraction = _mm256_sub_ps(magnitude, t);  // Exact.
  const __m256 round_up =
      _mm256_cmp_ps(fraction, _mm256_set1_ps(0.5f), _CMP_GE_OQ);
  t = _mm256_add_ps(t, _mm256_and_ps(round_up, _mm256_set1_ps(1.0f)));
  return _mm256_or_ps(t, sign);
}

// Loads a block of 32 floats and returns the bits of max |x| (as unsigned
// integers, which order non-negative floats; NaN sorts above inf).
QS_TARGET_AVX2 inline uint32_t LoadBlock32(const float* x, __m256 v[4],
                                           __m256i magnitude_bits[4]) {
  const __m256i abs_mask = _mm256_set1_epi32(0x7fffffff);
  for (int k = 0; k < 4; ++k) {
    v[k] = _mm256_loadu_ps(x + 8 * k);
    magnitude_bits[k] = _mm256_and_si256(_mm256_castps_si256(v[k]), abs_mask);
  }
  return HorizontalMaxU32(
      _mm256_max_epu32(_mm256_max_epu32(magnitude_bits[0], magnitude_bits[1]),
                       _mm256_max_epu32(magnitude_bits[2], magnitude_bits[3])));
}

// The first of the block's values whose magnitude has the bits
// `amax_bits` (from LoadBlock32), with its sign; +0 when all are zero.
QS_TARGET_AVX2 inline float FirstOfLargestMagnitude(
    const float* x, const __m256i magnitude_bits[4], uint32_t amax_bits) {
  if (amax_bits == 0) return 0.0f;
  const __m256i target = _mm256_set1_epi32(static_cast<int>(amax_bits));
  uint32_t hits = 0;
  for (int k = 0; k < 4; ++k) {
    const __m256i eq = _mm256_cmpeq_epi32(magnitude_bits[k], target);
    hits |= static_cast<uint32_t>(_mm256_movemask_ps(_mm256_castsi256_ps(eq)))
            << (8 * k);
  }
  return x[__builtin_ctz(hits)];
}

QS_TARGET_AVX2 bool QuantizeQ8_0Avx2(const float* x, int64_t blocks,
                                     uint8_t* out, const float*) {
  const __m256i byte_mask = _mm256_set1_epi32(0xff);
  const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  bool ok = true;
  for (int64_t i = 0; i < blocks; ++i, x += kQk8_0, out += sizeof(BlockQ8_0)) {
    __m256 v[4];
    __m256i magnitude_bits[4];
    const uint32_t amax_bits = LoadBlock32(x, v, magnitude_bits);
    if (amax_bits >= 0x7f800000u) {  // NaN or inf.
      ok = false;
      continue;
    }
    const float d = BitsToFloat(amax_bits) / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    const uint16_t d_half = FloatToHalf(d);
    ok = ok && IsFiniteHalf(d_half);  // Scale overflow.
    std::memcpy(out, &d_half, sizeof(d_half));
    const __m256 vid = _mm256_set1_ps(id);
    __m256i q[4];
    for (int k = 0; k < 4; ++k) {
      // Keep the low byte of each int32, as a C cast to int8_t does on x86.
      q[k] = _mm256_and_si256(
          _mm256_cvttps_epi32(RoundHalfAwayFromZero(_mm256_mul_ps(v[k], vid))),
          byte_mask);
    }
    const __m256i bytes = _mm256_packus_epi16(_mm256_packus_epi32(q[0], q[1]),
                                              _mm256_packus_epi32(q[2], q[3]));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + sizeof(uint16_t)),
                        _mm256_permutevar8x32_epi32(bytes, order));
  }
  return ok;
}

QS_TARGET_AVX2 bool QuantizeQ4_0Avx2(const float* x, int64_t blocks,
                                     uint8_t* out, const float*) {
  const __m256i byte_mask = _mm256_set1_epi32(0xff);
  const __m256i fifteen = _mm256_set1_epi32(15);
  const __m256 eight_and_a_half = _mm256_set1_ps(8.5f);
  const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  bool ok = true;
  for (int64_t i = 0; i < blocks; ++i, x += kQk4_0, out += sizeof(BlockQ4_0)) {
    __m256 v[4];
    __m256i magnitude_bits[4];
    const uint32_t amax_bits = LoadBlock32(x, v, magnitude_bits);
    if (amax_bits >= 0x7f800000u) {  // NaN or inf.
      ok = false;
      continue;
    }
    // The first element of largest magnitude, with its sign; +0 when all
    // are zero (the reference never replaces its initial 0.0f then).
    const float max = FirstOfLargestMagnitude(x, magnitude_bits, amax_bits);
    const float d = max / -8.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    const uint16_t d_half = FloatToHalf(d);
    ok = ok && IsFiniteHalf(d_half);  // Scale overflow.
    std::memcpy(out, &d_half, sizeof(d_half));
    const __m256 vid = _mm256_set1_ps(id);
    __m256i q[4];
    for (int k = 0; k < 4; ++k) {
      const __m256i t = _mm256_cvttps_epi32(
          _mm256_add_ps(_mm256_mul_ps(v[k], vid), eight_and_a_half));
      // (int8_t) keeps the low byte, sign-extended; then MIN(15, .).
      const __m256i s = _mm256_srai_epi32(_mm256_slli_epi32(t, 24), 24);
      q[k] = _mm256_min_epi32(s, fifteen);
    }
    // Byte j: element j in the low nibble, element j + 16 in the high one.
    const __m256i b0 = _mm256_or_si256(
        _mm256_and_si256(q[0], byte_mask),
        _mm256_and_si256(_mm256_slli_epi32(q[2], 4), byte_mask));
    const __m256i b1 = _mm256_or_si256(
        _mm256_and_si256(q[1], byte_mask),
        _mm256_and_si256(_mm256_slli_epi32(q[3], 4), byte_mask));
    const __m256i words = _mm256_packus_epi32(b0, b1);
    const __m256i bytes =
        _mm256_permutevar8x32_epi32(_mm256_packus_epi16(words, words), order);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + sizeof(uint16_t)),
                     _mm256_castsi256_si128(bytes));
  }
  return ok;
}

// Levels 0..31 held as floats in q[0..3] (elements 0..31): writes the low
// nibbles (element j low, j + 16 high, as Q4_0) to `qs`, and when `qh` is
// not null bit 4 of element j to bit j of the little-endian word `qh`.
QS_TARGET_AVX2 inline void PackLevels32(const __m256 q[4], uint8_t* qs,
                                        uint8_t* qh) {
  const __m256i byte_mask = _mm256_set1_epi32(0xff);
  const __m256i nibble = _mm256_set1_epi32(15);
  const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  __m256i n[4];
  for (int k = 0; k < 4; ++k) n[k] = _mm256_cvttps_epi32(q[k]);
  if (qh != nullptr) {
    uint32_t bits = 0;
    for (int k = 0; k < 4; ++k) {
      const __m256i high = _mm256_slli_epi32(_mm256_srli_epi32(n[k], 4), 31);
      bits |=
          static_cast<uint32_t>(_mm256_movemask_ps(_mm256_castsi256_ps(high)))
          << (8 * k);
    }
    std::memcpy(qh, &bits, sizeof(bits));
  }
  const __m256i b0 = _mm256_or_si256(
      _mm256_and_si256(n[0], nibble),
      _mm256_and_si256(_mm256_slli_epi32(_mm256_and_si256(n[2], nibble), 4),
                       byte_mask));
  const __m256i b1 = _mm256_or_si256(
      _mm256_and_si256(n[1], nibble),
      _mm256_and_si256(_mm256_slli_epi32(_mm256_and_si256(n[3], nibble), 4),
                       byte_mask));
  const __m256i words = _mm256_packus_epi32(b0, b1);
  const __m256i bytes =
      _mm256_permutevar8x32_epi32(_mm256_packus_epi16(words, words), order);
  _mm_storeu_si128(reinterpret_cast<__m128i*>(qs),
                   _mm256_castsi256_si128(bytes));
}

// ClampRound (format/scale_fit.h), eight lanes at a time.
QS_TARGET_AVX2 inline __m256 ClampRound(__m256 v, __m256 lo, __m256 hi) {
  const __m256 magic = _mm256_set1_ps(kRoundMagic);
  v = _mm256_blendv_ps(v, hi, _mm256_cmp_ps(v, hi, _CMP_GT_OQ));
  v = _mm256_blendv_ps(lo, v, _mm256_cmp_ps(v, lo, _CMP_GE_OQ));
  return _mm256_sub_ps(_mm256_add_ps(v, magic), magic);
}

// Q5_0 without importance weights: the reference's min-max quantizer.
QS_TARGET_AVX2 bool QuantizeQ5_0Avx2(const float* x, int64_t blocks,
                                     uint8_t* out, const float*) {
  bool ok = true;
  for (int64_t i = 0; i < blocks; ++i, x += kQk5_0, out += sizeof(BlockQ5_0)) {
    __m256 v[4];
    __m256i magnitude_bits[4];
    const uint32_t amax_bits = LoadBlock32(x, v, magnitude_bits);
    if (amax_bits > kLargestSearchedMagnitudeBits) {  // Also NaN and inf.
      ok = false;
      continue;
    }
    const float extreme = FirstOfLargestMagnitude(x, magnitude_bits, amax_bits);
    const uint16_t d_half = FloatToHalf(extreme / -16.0f);
    ok = ok && IsFiniteHalf(d_half);
    std::memcpy(out, &d_half, sizeof(d_half));
    const float d = HalfToFloat(d_half);
    const __m256 inverse = _mm256_set1_ps(d != 0 ? 1.0f / d : 0.0f);
    const __m256 lo = _mm256_set1_ps(-16.0f), hi = _mm256_set1_ps(15.0f);
    const __m256 sixteen = _mm256_set1_ps(16.0f);
    __m256 q[4];
    for (int k = 0; k < 4; ++k) {
      q[k] = _mm256_add_ps(ClampRound(_mm256_mul_ps(v[k], inverse), lo, hi),
                           sixteen);
    }
    PackLevels32(q, out + offsetof(BlockQ5_0, qs),
                 out + offsetof(BlockQ5_0, qh));
  }
  return ok;
}

// Q4_1 / Q5_1 without importance weights: the reference's min-max quantizer.
template <GgmlType kType, typename Block>
QS_TARGET_AVX2 bool QuantizeMinMaxAvx2(const float* x, int64_t blocks,
                                       uint8_t* out, const float*) {
  constexpr bool kFiveBits = std::is_same<Block, BlockQ5_1>::value;
  constexpr int kQMax = kFiveBits ? 31 : 15;
  bool ok = true;
  for (int64_t i = 0; i < blocks; ++i, x += 32, out += sizeof(Block)) {
    __m256 v[4];
    __m256i magnitude_bits[4];
    const uint32_t amax_bits = LoadBlock32(x, v, magnitude_bits);
    if (amax_bits > kLargestSearchedMagnitudeBits) {  // Also NaN and inf.
      ok = false;
      continue;
    }
    const __m256 lows =
        _mm256_min_ps(_mm256_min_ps(v[0], v[1]), _mm256_min_ps(v[2], v[3]));
    const __m256 highs =
        _mm256_max_ps(_mm256_max_ps(v[0], v[1]), _mm256_max_ps(v[2], v[3]));
    alignas(32) float l[8], h[8];
    _mm256_store_ps(l, lows);
    _mm256_store_ps(h, highs);
    float low = l[0], high = h[0];
    for (int k = 1; k < 8; ++k) {
      low = std::min(low, l[k]);
      high = std::max(high, h[k]);
    }
    if (low == 0.0f || high == 0.0f) {
      // Which zero (+0 or -0) the reference keeps depends on the order:
      // let it decide.
      ok = GetBlockQuantizer(kType, false)(x, nullptr, out) && ok;
      continue;
    }
    uint16_t d_half, m_half;
    d_half = FloatToHalf((high - low) / static_cast<float>(kQMax));
    m_half = FloatToHalf(low);
    ok = ok && IsFiniteHalf(d_half) && IsFiniteHalf(m_half);
    std::memcpy(out + offsetof(Block, d), &d_half, sizeof(d_half));
    std::memcpy(out + offsetof(Block, m), &m_half, sizeof(m_half));
    const float d = HalfToFloat(d_half);
    const __m256 inverse = _mm256_set1_ps(d > 0 ? 1.0f / d : 0.0f);
    const __m256 offset = _mm256_set1_ps(HalfToFloat(m_half));
    const __m256 lo = _mm256_setzero_ps();
    const __m256 hi = _mm256_set1_ps(static_cast<float>(kQMax));
    __m256 q[4];
    for (int k = 0; k < 4; ++k) {
      q[k] = ClampRound(_mm256_mul_ps(_mm256_sub_ps(v[k], offset), inverse), lo,
                        hi);
    }
    uint8_t* qh = nullptr;
    if constexpr (kFiveBits) qh = out + offsetof(BlockQ5_1, qh);
    PackLevels32(q, out + offsetof(Block, qs), qh);
  }
  return ok;
}

QS_TARGET_AVX2 bool QuantizeF32Avx2(const float* x, int64_t n, uint8_t* out,
                                    const float* importance) {
  const __m256i abs_mask = _mm256_set1_epi32(0x7fffffff);
  __m256i max_bits = _mm256_setzero_si256();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256i v =
        _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + i));
    max_bits = _mm256_max_epu32(max_bits, _mm256_and_si256(v, abs_mask));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + 4 * i), v);
  }
  const bool ok = HorizontalMaxU32(max_bits) < 0x7f800000u;
  return QuantizeF32Scalar(x + i, n - i, out + 4 * i, importance) && ok;
}

QS_TARGET_AVX2 bool QuantizeF16Avx2(const float* x, int64_t n, uint8_t* out,
                                    const float* importance) {
  // F16C rounds to nearest even like FloatToHalf; it keeps NaN payload bits
  // where FloatToHalf writes 0x7e00, but NaN is an error anyway.
  const __m128i magnitude_mask = _mm_set1_epi16(0x7fff);
  const __m128i largest_finite = _mm_set1_epi16(0x7bff);
  __m128i bad = _mm_setzero_si128();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m128i h =
        _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT);
    bad = _mm_or_si128(
        bad, _mm_cmpgt_epi16(_mm_and_si128(h, magnitude_mask), largest_finite));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + 2 * i), h);
  }
  const bool ok = _mm_movemask_epi8(bad) == 0;
  return QuantizeF16Scalar(x + i, n - i, out + 2 * i, importance) && ok;
}

QS_TARGET_AVX2 inline __m256i Bf16Bits(__m256i u) {
  const __m256i magnitude = _mm256_and_si256(u, _mm256_set1_epi32(0x7fffffff));
  const __m256i is_nan =
      _mm256_cmpgt_epi32(magnitude, _mm256_set1_epi32(0x7f800000));
  const __m256i lsb =
      _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
  const __m256i rounded = _mm256_srli_epi32(
      _mm256_add_epi32(u, _mm256_add_epi32(_mm256_set1_epi32(0x7fff), lsb)),
      16);
  const __m256i quiet_nan =
      _mm256_or_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(0x40));
  return _mm256_blendv_epi8(rounded, quiet_nan, is_nan);
}

QS_TARGET_AVX2 bool QuantizeBf16Avx2(const float* x, int64_t n, uint8_t* out,
                                     const float* importance) {
  const __m256i magnitude_mask = _mm256_set1_epi32(0x7fff);
  const __m256i largest_finite = _mm256_set1_epi32(0x7f7f);
  __m256i bad = _mm256_setzero_si256();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m256i lo =
        Bf16Bits(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + i)));
    const __m256i hi = Bf16Bits(
        _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + i + 8)));
    bad = _mm256_or_si256(
        bad, _mm256_cmpgt_epi32(_mm256_and_si256(lo, magnitude_mask),
                                largest_finite));
    bad = _mm256_or_si256(
        bad, _mm256_cmpgt_epi32(_mm256_and_si256(hi, magnitude_mask),
                                largest_finite));
    const __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(lo, hi),
                                                    _MM_SHUFFLE(3, 1, 2, 0));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + 2 * i), packed);
  }
  const bool ok = _mm256_movemask_epi8(bad) == 0;
  return QuantizeBf16Scalar(x + i, n - i, out + 2 * i, importance) && ok;
}

QS_TARGET_AVX2 void DequantizeQ8_0Avx2(const uint8_t* in, int64_t blocks,
                                       float* y) {
  for (int64_t i = 0; i < blocks; ++i, in += sizeof(BlockQ8_0), y += kQk8_0) {
    uint16_t d_half;
    std::memcpy(&d_half, in, sizeof(d_half));
    const __m256 d = _mm256_set1_ps(HalfToFloat(d_half));
    for (int k = 0; k < 4; ++k) {
      const __m128i q = _mm_loadl_epi64(
          reinterpret_cast<const __m128i*>(in + sizeof(uint16_t) + 8 * k));
      _mm256_storeu_ps(
          y + 8 * k,
          _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q)), d));
    }
  }
}

QS_TARGET_AVX2 void DequantizeQ4_0Avx2(const uint8_t* in, int64_t blocks,
                                       float* y) {
  const __m128i low_nibble = _mm_set1_epi8(0x0f);
  const __m256i eight = _mm256_set1_epi32(8);
  for (int64_t i = 0; i < blocks; ++i, in += sizeof(BlockQ4_0), y += kQk4_0) {
    uint16_t d_half;
    std::memcpy(&d_half, in, sizeof(d_half));
    const __m256 d = _mm256_set1_ps(HalfToFloat(d_half));
    const __m128i bytes = _mm_loadu_si128(
        reinterpret_cast<const __m128i*>(in + sizeof(uint16_t)));
    const __m128i lo = _mm_and_si128(bytes, low_nibble);
    const __m128i hi = _mm_and_si128(_mm_srli_epi16(bytes, 4), low_nibble);
    const __m128i parts[4] = {lo, _mm_srli_si128(lo, 8), hi,
                              _mm_srli_si128(hi, 8)};
    for (int k = 0; k < 4; ++k) {
      const __m256i q = _mm256_sub_epi32(_mm256_cvtepu8_epi32(parts[k]), eight);
      _mm256_storeu_ps(y + 8 * k, _mm256_mul_ps(_mm256_cvtepi32_ps(q), d));
    }
  }
}

QS_TARGET_AVX2 void DequantizeF16Avx2(const uint8_t* in, int64_t n, float* y) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    // F16C is exact, and quiets NaNs as HalfToFloat does.
    const __m128i h =
        _mm_loadu_si128(reinterpret_cast<const __m128i*>(in + 2 * i));
    _mm256_storeu_ps(y + i, _mm256_cvtph_ps(h));
  }
  DequantizeF16Scalar(in + 2 * i, n - i, y + i);
}

QS_TARGET_AVX2 void DequantizeBf16Avx2(const uint8_t* in, int64_t n, float* y) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m128i h =
        _mm_loadu_si128(reinterpret_cast<const __m128i*>(in + 2 * i));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(y + i),
                        _mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  }
  DequantizeBf16Scalar(in + 2 * i, n - i, y + i);
}

#endif  // QS_HAVE_X86

// ---------------------------------------------------------------------------
// Dispatch.

QuantizeIsa DetectIsa() {
#if QS_HAVE_X86
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c")) {
    return QuantizeIsa::kAvx2;
  }
#endif
  return QuantizeIsa::kScalar;
}

std::atomic<QuantizeIsa>& ActiveIsa() {
  static std::atomic<QuantizeIsa> isa{BestQuantizeIsa()};
  return isa;
}

QuantizeKernel FindQuantizeKernel(GgmlType type, QuantizeIsa isa,
                                  bool weighted) {
  // Importance weights change only the searched quantizers' results: those
  // run their reference block functions.
  const bool searched_weighted =
      weighted && GetBlockQuantizer(type, true) != nullptr;
#if QS_HAVE_X86
  if (isa == QuantizeIsa::kAvx2 && !searched_weighted) {
    switch (type) {
      case GgmlType::kF32:
        return QuantizeF32Avx2;
      case GgmlType::kF16:
        return QuantizeF16Avx2;
      case GgmlType::kBF16:
        return QuantizeBf16Avx2;
      case GgmlType::kQ8_0:
        return QuantizeQ8_0Avx2;
      case GgmlType::kQ4_0:
        return QuantizeQ4_0Avx2;
      case GgmlType::kQ4_1:
        return QuantizeMinMaxAvx2<GgmlType::kQ4_1, BlockQ4_1>;
      case GgmlType::kQ5_0:
        return QuantizeQ5_0Avx2;
      case GgmlType::kQ5_1:
        return QuantizeMinMaxAvx2<GgmlType::kQ5_1, BlockQ5_1>;
      default:
        break;
    }
  }
#endif
  switch (type) {
    case GgmlType::kF32:
      return QuantizeF32Scalar;
    case GgmlType::kF16:
      return QuantizeF16Scalar;
    case GgmlType::kBF16:
      return QuantizeBf16Scalar;
    case GgmlType::kQ8_0:
      return QuantizeBlocksScalar<GgmlType::kQ8_0, BlockQ8_0, kQk8_0,
                                  QuantizeBlockQ8_0Reference>;
    case GgmlType::kQ4_0:
      if (searched_weighted) return QuantizeSearchedScalar<GgmlType::kQ4_0>;
      return QuantizeBlocksScalar<GgmlType::kQ4_0, BlockQ4_0, kQk4_0,
                                  QuantizeBlockQ4_0Reference>;
    case GgmlType::kQ4_1:
      return QuantizeSearchedScalar<GgmlType::kQ4_1>;
    case GgmlType::kQ5_0:
      return QuantizeSearchedScalar<GgmlType::kQ5_0>;
    case GgmlType::kQ5_1:
      return QuantizeSearchedScalar<GgmlType::kQ5_1>;
    case GgmlType::kQ2_K:
      return QuantizeSearchedScalar<GgmlType::kQ2_K>;
    case GgmlType::kQ3_K:
      return QuantizeSearchedScalar<GgmlType::kQ3_K>;
    case GgmlType::kQ4_K:
      return QuantizeSearchedScalar<GgmlType::kQ4_K>;
    case GgmlType::kQ5_K:
      return QuantizeSearchedScalar<GgmlType::kQ5_K>;
    case GgmlType::kQ6_K:
      return QuantizeSearchedScalar<GgmlType::kQ6_K>;
    default:
      return nullptr;
  }
}

DequantizeKernel FindDequantizeKernel(GgmlType type, QuantizeIsa isa) {
#if QS_HAVE_X86
  if (isa == QuantizeIsa::kAvx2) {
    switch (type) {
      case GgmlType::kF16:
        return DequantizeF16Avx2;
      case GgmlType::kBF16:
        return DequantizeBf16Avx2;
      case GgmlType::kQ8_0:
        return DequantizeQ8_0Avx2;
      case GgmlType::kQ4_0:
        return DequantizeQ4_0Avx2;
      default:
        break;
    }
  }
#endif
  switch (type) {
    case GgmlType::kF32:
      return DequantizeF32Scalar;
    case GgmlType::kF16:
      return DequantizeF16Scalar;
    case GgmlType::kBF16:
      return DequantizeBf16Scalar;
    case GgmlType::kQ8_0:
      return DequantizeBlocksScalar<GgmlType::kQ8_0>;
    case GgmlType::kQ4_0:
      return DequantizeBlocksScalar<GgmlType::kQ4_0>;
    case GgmlType::kQ4_1:
      return DequantizeBlocksScalar<GgmlType::kQ4_1>;
    case GgmlType::kQ5_0:
      return DequantizeBlocksScalar<GgmlType::kQ5_0>;
    case GgmlType::kQ5_1:
      return DequantizeBlocksScalar<GgmlType::kQ5_1>;
    case GgmlType::kQ2_K:
      return DequantizeBlocksScalar<GgmlType::kQ2_K>;
    case GgmlType::kQ3_K:
      return DequantizeBlocksScalar<GgmlType::kQ3_K>;
    case GgmlType::kQ4_K:
      return DequantizeBlocksScalar<GgmlType::kQ4_K>;
    case GgmlType::kQ5_K:
      return DequantizeBlocksScalar<GgmlType::kQ5_K>;
    case GgmlType::kQ6_K:
      return DequantizeBlocksScalar<GgmlType::kQ6_K>;
    default:
      return nullptr;
  }
}

// Below this many elements per thread, another thread costs more than it
// saves.
constexpr int64_t kMinElementsPerThread = 16384;

// How a rows x cols job is cut into tasks: each row into `pieces` runs of
// units, so that there are several tasks per thread even for few rows.
struct WorkSplit {
  int64_t rows = 0;
  int64_t units_per_row = 0;  // Blocks (or elements) per row.
  int64_t pieces = 1;         // Tasks per row.
  int threads = 1;            // Threads to run.

  int64_t tasks() const { return rows * pieces; }
  // [begin, end) units of piece `p` of a row.
  int64_t PieceBegin(int64_t p) const {
    const int64_t base = units_per_row / pieces;
    const int64_t extra = units_per_row % pieces;
    return p * base + std::min(p, extra);
  }
};

struct Geometry {
  int64_t block_size = 1;
  uint64_t block_bytes = 1;
  uint64_t row_bytes = 0;
  WorkSplit split;
};

// Validates a (de)quantization job and plans its split.
absl::StatusOr<Geometry> Plan(GgmlType type, int64_t rows, int64_t cols,
                              const void* src, const void* dst,
                              int num_threads) {
  RETURN_IF_ERROR(CheckQuantizeArgs(type, cols));
  if (rows < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("row count ", rows, " must not be negative"));
  }
  Geometry g;
  ASSIGN_OR_RETURN(g.row_bytes, GgmlRowBytes(type, cols));
  const GgmlTypeTraits& traits = GetGgmlTypeTraits(type);
  g.block_size = traits.block_size;
  g.block_bytes = static_cast<uint64_t>(traits.type_size);
  if (cols > 0 && rows > std::numeric_limits<int64_t>::max() / cols) {
    return absl::InvalidArgumentError(
        absl::StrCat(rows, " x ", cols, " elements overflow 64 bits"));
  }
  if (g.row_bytes > 0 && static_cast<uint64_t>(rows) >
                             std::numeric_limits<size_t>::max() / g.row_bytes) {
    return absl::InvalidArgumentError(
        absl::StrCat(rows, " rows of ", g.row_bytes, " bytes overflow size_t"));
  }
  if (rows > 0 && cols > 0 && (src == nullptr || dst == nullptr)) {
    return absl::InvalidArgumentError("null source or destination buffer");
  }
  WorkSplit& split = g.split;
  split.rows = rows;
  split.units_per_row = cols / g.block_size;
  split.threads = num_threads > 0 ? num_threads : omp_get_max_threads();
  if (split.threads < 1) split.threads = 1;
  // Aim for at least 4 tasks per thread so that uneven rows balance out.
  const int64_t wanted_tasks = 4 * static_cast<int64_t>(split.threads);
  if (rows > 0 && rows < wanted_tasks) {
    split.pieces = std::min<int64_t>(std::max<int64_t>(split.units_per_row, 1),
                                     (wanted_tasks + rows - 1) / rows);
  }
  // The split above depends only on the requested count, so the bytes do
  // not depend on how many threads really run. Those are capped: no more than
  // the processors (oversubscribed OpenMP barriers stall for whole
  // scheduler slices) and no thread for less than kMinElementsPerThread.
  const int64_t elements = rows * cols;
  const int64_t useful = std::max<int64_t>(1, elements / kMinElementsPerThread);
  split.threads = static_cast<int>(std::min<int64_t>(
      {static_cast<int64_t>(split.threads), useful, split.tasks(),
       static_cast<int64_t>(std::max(1, omp_get_num_procs()))}));
  return g;
}

}  // namespace

QuantizeIsa BestQuantizeIsa() {
  static const QuantizeIsa best = DetectIsa();
  return best;
}

absl::string_view QuantizeIsaName(QuantizeIsa isa) {
  switch (isa) {
    case QuantizeIsa::kScalar:
      return "scalar";
    case QuantizeIsa::kAvx2:
      return "avx2";
  }
  return "unknown";
}

void SetQuantizeIsaForTesting(QuantizeIsa isa) {
  ActiveIsa().store(static_cast<int>(isa) <= static_cast<int>(BestQuantizeIsa())
                        ? isa
                        : BestQuantizeIsa());
}

QuantizeIsa ActiveQuantizeIsa() { return ActiveIsa().load(); }

absl::Status QuantizeRows(GgmlType type, const float* src, int64_t rows,
                          int64_t cols, void* dst, int num_threads,
                          const float* importance) {
  ASSIGN_OR_RETURN(const Geometry g,
                   Plan(type, rows, cols, src, dst, num_threads));
  if (rows == 0 || cols == 0) return absl::OkStatus();
  RETURN_IF_ERROR(CheckImportance(importance, cols));
  const QuantizeKernel kernel =
      FindQuantizeKernel(type, ActiveQuantizeIsa(), importance != nullptr);
  if (kernel == nullptr) {
    return absl::InternalError("no kernel for a supported type");
  }
  const WorkSplit& split = g.split;
  uint8_t* const out = static_cast<uint8_t*>(dst);
  bool representable = true;
#pragma omp parallel for num_threads(split.threads) schedule(static) \
    reduction(&& : representable) if (split.threads > 1)
  for (int64_t task = 0; task < split.tasks(); ++task) {
    const int64_t row = task / split.pieces;
    const int64_t piece = task % split.pieces;
    const int64_t begin = split.PieceBegin(piece);
    const int64_t end = split.PieceBegin(piece + 1);
    const int64_t first_col = begin * g.block_size;
    const bool ok =
        kernel(src + row * cols + first_col, end - begin,
               out + static_cast<uint64_t>(row) * g.row_bytes +
                   static_cast<uint64_t>(begin) * g.block_bytes,
               importance == nullptr ? nullptr : importance + first_col);
    representable = representable && ok;
  }
  if (!representable) {
    // Rare: find the first offender in row-major order, whatever the split.
    for (int64_t row = 0; row < rows; ++row) {
      RETURN_IF_ERROR(
          CheckRepresentable(type, src + row * cols, cols, row, importance));
    }
    return absl::InternalError(
        "a kernel reported unrepresentable input; the check found none");
  }
  return absl::OkStatus();
}

absl::Status DequantizeRows(GgmlType type, const void* src, int64_t rows,
                            int64_t cols, float* dst, int num_threads) {
  ASSIGN_OR_RETURN(const Geometry g,
                   Plan(type, rows, cols, src, dst, num_threads));
  if (rows == 0 || cols == 0) return absl::OkStatus();
  const DequantizeKernel kernel =
      FindDequantizeKernel(type, ActiveQuantizeIsa());
  if (kernel == nullptr) {
    return absl::InternalError("no kernel for a supported type");
  }
  const WorkSplit& split = g.split;
  const uint8_t* const in = static_cast<const uint8_t*>(src);
#pragma omp parallel for num_threads(split.threads) \
    schedule(static) if (split.threads > 1)
  for (int64_t task = 0; task < split.tasks(); ++task) {
    const int64_t row = task / split.pieces;
    const int64_t piece = task % split.pieces;
    const int64_t begin = split.PieceBegin(piece);
    const int64_t end = split.PieceBegin(piece + 1);
    kernel(in + static_cast<uint64_t>(row) * g.row_bytes +
               static_cast<uint64_t>(begin) * g.block_bytes,
           end - begin, dst + row * cols + begin * g.block_size);
  }
  return absl::OkStatus();
}

}  // namespace quant
