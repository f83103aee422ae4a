#include "format/ggml_blocks.h"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstring>
#include <string>

#include "absl/strings/str_cat.h"
#include "format/half.h"
#include "format/scale_fit.h"

namespace quant {
namespace {

// x86 cvttss2si: truncate toward zero; NaN or a value outside int32 gives
// INT32_MIN. Written without undefined behaviour.
int32_t TruncToInt32X86(float v) {
  // -2147483904 is the float below -2^31; 2147483648 is 2^31.
  if (!(v > -2147483904.0f && v < 2147483648.0f)) return INT32_MIN;
  return static_cast<int32_t>(v);
}

// What `(int8_t)v` compiles to on x86: cvttss2si, then the low byte.
int32_t FloatToInt8X86(float v) {
  const int32_t low =
      static_cast<int32_t>(static_cast<uint32_t>(TruncToInt32X86(v)) & 0xffu);
  return low >= 128 ? low - 256 : low;
}

// `dst` need not be aligned for Block: blocks are built on the stack and
// copied out.
template <typename Block, int64_t kBlockElements,
          void (*kQuantize)(const float*, Block*)>
void QuantizeBlocks(const float* src, int64_t n, void* dst) {
  uint8_t* out = static_cast<uint8_t*>(dst);
  for (int64_t i = 0; i < n / kBlockElements; ++i) {
    Block block;
    kQuantize(src + i * kBlockElements, &block);
    std::memcpy(out + i * sizeof(Block), &block, sizeof(Block));
  }
}

}  // namespace

void QuantizeBlockQ8_0Reference(const float* x, BlockQ8_0* y) {
  float amax = 0.0f;
  for (int j = 0; j < kQk8_0; ++j) {
    const float a = std::fabs(x[j]);
    amax = amax > a ? amax : a;  // llama.cpp's MAX(amax, fabsf(v)).
  }
  const float d = amax / 127.0f;
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  y->d = FloatToHalf(d);
  for (int j = 0; j < kQk8_0; ++j) {
    const float scaled = x[j] * id;
    y->qs[j] = static_cast<int8_t>(FloatToInt8X86(std::round(scaled)));
  }
}

void QuantizeBlockQ4_0Reference(const float* x, BlockQ4_0* y) {
  float amax = 0.0f;
  float max = 0.0f;  // The first value of largest magnitude, with its sign.
  for (int j = 0; j < kQk4_0; ++j) {
    if (amax < std::fabs(x[j])) {
      amax = std::fabs(x[j]);
      max = x[j];
    }
  }
  const float d = max / -8.0f;
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  y->d = FloatToHalf(d);
  for (int j = 0; j < kQk4_0 / 2; ++j) {
    const float x0 = x[j] * id;
    const float x1 = x[j + kQk4_0 / 2] * id;
    const int32_t s0 = FloatToInt8X86(x0 + 8.5f);
    const int32_t s1 = FloatToInt8X86(x1 + 8.5f);
    const uint8_t q0 = static_cast<uint8_t>(s0 < 15 ? s0 : 15);
    const uint8_t q1 = static_cast<uint8_t>(s1 < 15 ? s1 : 15);
    y->qs[j] = static_cast<uint8_t>(q0 | (q1 << 4));
  }
}

void DequantizeBlockQ8_0Reference(const BlockQ8_0& block, float* y) {
  const float d = HalfToFloat(block.d);
  for (int j = 0; j < kQk8_0; ++j) {
    y[j] = static_cast<float>(block.qs[j]) * d;
  }
}

void DequantizeBlockQ4_0Reference(const BlockQ4_0& block, float* y) {
  const float d = HalfToFloat(block.d);
  for (int j = 0; j < kQk4_0 / 2; ++j) {
    const int q0 = (block.qs[j] & 0x0f) - 8;
    const int q1 = (block.qs[j] >> 4) - 8;
    y[j] = static_cast<float>(q0) * d;
    y[j + kQk4_0 / 2] = static_cast<float>(q1) * d;
  }
}

// ---------------------------------------------------------------------------
// Searched types.

namespace {

// Fit weights: the value's importance (the diagonal of the input Hessian,
// or 1) times sqrt(sigma^2 + x^2), sigma^2 the block's mean square. Without
// calibration data the second factor stands in for what matters most: the
// large weights, whose errors the activations amplify; the sigma^2 term keeps
// small values from being ignored outright.
// The weights are normalized to a largest of 1 so that the fits' weighted
// sums stay far from overflow (blocks reach here with |x| <= 2^30).
void FitWeights(const float* x, const float* importance, int n, float* w) {
  float sum_squares = 0;
  for (int i = 0; i < n; ++i) sum_squares += x[i] * x[i];
  const float sigma2 = sum_squares / static_cast<float>(n);
  float largest = 0;
  for (int i = 0; i < n; ++i) {
    const float base = std::sqrt(sigma2 + x[i] * x[i]);
    w[i] = importance != nullptr ? importance[i] * base : base;
    largest = std::max(largest, w[i]);
  }
  if (largest > 0) {
    const float inverse = 1.0f / largest;
    for (int i = 0; i < n; ++i) w[i] *= inverse;
  }
}

// fp16 of v, and whether it is finite.
bool StoreHalf(float v, uint16_t* h) {
  *h = FloatToHalf(v);
  return IsFiniteHalf(*h);
}

// Levels for x ~= scale * q + offset, q in [0, q_max] (0 when scale is 0).
void RoundAffine(const float* x, int n, float scale, float offset, int q_max,
                 uint8_t* q) {
  const float inverse = scale > 0 ? 1.0f / scale : 0.0f;
  for (int i = 0; i < n; ++i) {
    q[i] =
        static_cast<uint8_t>(RoundClamp((x[i] - offset) * inverse, 0, q_max));
  }
}

// Levels for x ~= scale * q, q in [-q_neg, q_neg - 1], stored + q_neg.
void RoundSymmetric(const float* x, int n, float scale, int q_neg, uint8_t* q) {
  const float inverse = scale != 0 ? 1.0f / scale : 0.0f;
  for (int i = 0; i < n; ++i) {
    q[i] = static_cast<uint8_t>(RoundClamp(x[i] * inverse, -q_neg, q_neg - 1) +
                                q_neg);
  }
}

// Q4_0 / Q5_0: one symmetric fit per block of 32 with importance weights;
// without them the min-max scale (the largest magnitude onto -q_neg), as
// llama.cpp does: the search gains little there and costs 30x the time.
bool QuantizeSymmetric32(const float* x, const float* importance, int q_neg,
                         uint16_t* d, uint8_t q[32]) {
  float scale = 0;
  if (importance == nullptr) {
    float amax = 0;
    for (int i = 0; i < 32; ++i) {
      if (std::fabs(x[i]) > amax) amax = std::fabs(x[i]), scale = x[i];
    }
    scale /= static_cast<float>(-q_neg);
  } else {
    float w[32];
    FitWeights(x, importance, 32, w);
    scale = FitSymmetric(x, w, 32, q_neg, nullptr);
  }
  const bool ok = StoreHalf(scale, d);
  RoundSymmetric(x, 32, HalfToFloat(*d), q_neg, q);
  return ok;
}

// Q4_1 / Q5_1: one affine fit per block of 32 with importance weights,
// min-max without (as Q4_0 / Q5_0 above).
bool QuantizeAffine32(const float* x, const float* importance, int q_max,
                      uint16_t* d, uint16_t* m, uint8_t q[32]) {
  AffineFit fit;
  if (importance != nullptr) {
    float w[32];
    FitWeights(x, importance, 32, w);
    fit = FitAffine(x, w, 32, q_max, false, nullptr);
  }
  if (importance == nullptr ||
      !(StoreHalf(fit.scale, d) && StoreHalf(fit.offset, m))) {
    // Near the fp16 limit the fitted offset (which may lie below the block's
    // minimum) can overflow where the min-max one does not.
    const float* low = std::min_element(x, x + 32);
    fit.offset = *low;
    fit.scale = (*std::max_element(x, x + 32) - *low) / q_max;
  }
  const bool ok = StoreHalf(fit.scale, d) && StoreHalf(fit.offset, m);
  RoundAffine(x, 32, HalfToFloat(*d), HalfToFloat(*m), q_max, q);
  return ok;
}

// Low nibbles: element j; high nibbles: element j + 16.
void PackNibbles32(const uint8_t q[32], uint8_t qs[16]) {
  for (int j = 0; j < 16; ++j) {
    qs[j] = static_cast<uint8_t>((q[j] & 15) | ((q[j + 16] & 15) << 4));
  }
}

void PackHighBits32(const uint8_t q[32], uint8_t qh[4]) {
  uint32_t bits = 0;
  for (int j = 0; j < 32; ++j) bits |= static_cast<uint32_t>(q[j] >> 4) << j;
  for (int k = 0; k < 4; ++k) qh[k] = static_cast<uint8_t>(bits >> (8 * k));
}

// Element j (< 32) of a Q5_0 / Q5_1 block: the low nibble from qs (as
// PackNibbles32 puts it), bit 4 from the little-endian word qh.
int Level5(const uint8_t qs[16], const uint8_t qh[4], int j) {
  const uint32_t high =
      static_cast<uint32_t>(qh[0]) | static_cast<uint32_t>(qh[1]) << 8 |
      static_cast<uint32_t>(qh[2]) << 16 | static_cast<uint32_t>(qh[3]) << 24;
  const int nibble = j < 16 ? qs[j] & 15 : qs[j - 16] >> 4;
  return nibble | static_cast<int>(((high >> j) & 1) << 4);
}

// An affine super-block (Q2_K, Q4_K, Q5_K): kGroups sub-blocks, each fitted
// with levels 0..kQMax and a non-positive offset; then the sub-block scales
// and mins (-offsets) quantized to 0..kScaleMax against d and dmin, and the
// levels re-rounded with the quantized values the decoder will use.
template <int kGroups, int kQMax, int kScaleMax>
bool QuantizeAffineSuperBlock(const float* x, const float* importance,
                              uint8_t levels[kQkK], uint8_t sc[kGroups],
                              uint8_t mn[kGroups], uint16_t* d,
                              uint16_t* dmin) {
  constexpr int kGroupSize = kQkK / kGroups;
  float w[kQkK];
  FitWeights(x, importance, kQkK, w);
  float scales[kGroups], mins[kGroups];
  float max_scale = 0, max_min = 0;
  for (int g = 0; g < kGroups; ++g) {
    const AffineFit fit = FitAffine(x + g * kGroupSize, w + g * kGroupSize,
                                    kGroupSize, kQMax, true, nullptr);
    scales[g] = fit.scale;
    mins[g] = -fit.offset;
    max_scale = std::max(max_scale, scales[g]);
    max_min = std::max(max_min, mins[g]);
  }
  const bool ok = StoreHalf(max_scale / kScaleMax, d) &&
                  StoreHalf(max_min / kScaleMax, dmin);
  const float d_value = HalfToFloat(*d);
  const float dmin_value = HalfToFloat(*dmin);
  const float inverse_d = d_value > 0 ? 1.0f / d_value : 0.0f;
  const float inverse_dmin = dmin_value > 0 ? 1.0f / dmin_value : 0.0f;
  for (int g = 0; g < kGroups; ++g) {
    sc[g] =
        static_cast<uint8_t>(RoundClamp(scales[g] * inverse_d, 0, kScaleMax));
    mn[g] =
        static_cast<uint8_t>(RoundClamp(mins[g] * inverse_dmin, 0, kScaleMax));
    RoundAffine(x + g * kGroupSize, kGroupSize, d_value * sc[g],
                -(dmin_value * mn[g]), kQMax, levels + g * kGroupSize);
  }
  return ok;
}

// A symmetric super-block (Q3_K, Q6_K): 16 sub-blocks of 16 with levels
// -kQNeg..kQNeg-1, their scales quantized to -kScaleNeg..kScaleNeg-1 against
// d. Levels are stored + kQNeg.
template <int kQNeg, int kScaleNeg>
bool QuantizeSymmetricSuperBlock(const float* x, const float* importance,
                                 uint8_t levels[kQkK], int8_t sc[16],
                                 uint16_t* d) {
  float w[kQkK];
  FitWeights(x, importance, kQkK, w);
  float scales[16];
  float extreme = 0;  // The first sub-block scale of largest magnitude.
  for (int g = 0; g < 16; ++g) {
    scales[g] = FitSymmetric(x + 16 * g, w + 16 * g, 16, kQNeg, nullptr);
    if (std::fabs(scales[g]) > std::fabs(extreme)) extreme = scales[g];
  }
  const bool ok = StoreHalf(extreme / -kScaleNeg, d);
  const float d_value = HalfToFloat(*d);
  const float inverse_d = d_value != 0 ? 1.0f / d_value : 0.0f;
  for (int g = 0; g < 16; ++g) {
    sc[g] = static_cast<int8_t>(
        RoundClamp(scales[g] * inverse_d, -kScaleNeg, kScaleNeg - 1));
    RoundSymmetric(x + 16 * g, 16, d_value * sc[g], kQNeg, levels + 16 * g);
  }
  return ok;
}

// The 2-bit planes of Q2_K and Q3_K: element 128 h + 32 k + l in bits
// 2k..2k+1 of qs[32 h + l].
void Pack2BitPlanes(const uint8_t levels[kQkK], uint8_t qs[kQkK / 4]) {
  for (int h = 0; h < 2; ++h) {
    for (int l = 0; l < 32; ++l) {
      uint8_t byte = 0;
      for (int k = 0; k < 4; ++k) {
        byte |=
            static_cast<uint8_t>((levels[128 * h + 32 * k + l] & 3) << (2 * k));
      }
      qs[32 * h + l] = byte;
    }
  }
}

int Level2BitPlanes(const uint8_t qs[kQkK / 4], int e) {
  const int h = e / 128, k = (e % 128) / 32, l = e % 32;
  return (qs[32 * h + l] >> (2 * k)) & 3;
}

// Sub-block s's 6-bit scale of a Q3_K block, -32..31 (stored + 32).
int ScaleQ3_K(const BlockQ3_K& b, int s) {
  const int stored = ((b.scales[s % 8] >> (s < 8 ? 0 : 4)) & 15) |
                     (((b.scales[8 + s % 4] >> (2 * (s / 4))) & 3) << 4);
  return stored - 32;
}

void SetScaleQ3_K(int s, int scale, BlockQ3_K* b) {
  const int stored = scale + 32;  // 0..63
  const int low_shift = s < 8 ? 0 : 4, high_shift = 2 * (s / 4);
  uint8_t& low = b->scales[s % 8];
  uint8_t& high = b->scales[8 + s % 4];
  low = static_cast<uint8_t>((low & ~(15 << low_shift)) |
                             ((stored & 15) << low_shift));
  high = static_cast<uint8_t>((high & ~(3 << high_shift)) |
                              ((stored >> 4) << high_shift));
}

// The level packings of the k-quants (stored levels, i.e. 0-based), as the
// layout comments in ggml_blocks.h describe them.
void PackLevelsQ3_K(const uint8_t levels[kQkK], BlockQ3_K* y) {
  for (int l = 0; l < 32; ++l) {  // Bit b of hmask[l]: element 32 b + l.
    uint8_t bits = 0;
    for (int b = 0; b < 8; ++b) {
      bits |= static_cast<uint8_t>((levels[32 * b + l] >> 2) << b);
    }
    y->hmask[l] = bits;
  }
  Pack2BitPlanes(levels, y->qs);
}

void PackLevelsQ4_K(const uint8_t levels[kQkK], BlockQ4_K* y) {
  for (int i = 0; i < 4; ++i) {
    for (int l = 0; l < 32; ++l) {
      y->qs[32 * i + l] = static_cast<uint8_t>(levels[64 * i + l] |
                                               (levels[64 * i + 32 + l] << 4));
    }
  }
}

void PackLevelsQ5_K(const uint8_t levels[kQkK], BlockQ5_K* y) {
  std::memset(y->qh, 0, sizeof(y->qh));
  for (int i = 0; i < 4; ++i) {
    for (int l = 0; l < 32; ++l) {
      const uint8_t lo = levels[64 * i + l], hi = levels[64 * i + 32 + l];
      y->qs[32 * i + l] = static_cast<uint8_t>((lo & 15) | ((hi & 15) << 4));
      y->qh[l] |= static_cast<uint8_t>(((lo >> 4) << (2 * i)) |
                                       ((hi >> 4) << (2 * i + 1)));
    }
  }
}

void PackLevelsQ6_K(const uint8_t levels[kQkK], BlockQ6_K* y) {
  for (int h = 0; h < 2; ++h) {
    for (int l = 0; l < 32; ++l) {
      const uint8_t* q = levels + 128 * h + l;
      y->ql[64 * h + l] =
          static_cast<uint8_t>((q[0] & 15) | ((q[64] & 15) << 4));
      y->ql[64 * h + 32 + l] =
          static_cast<uint8_t>((q[32] & 15) | ((q[96] & 15) << 4));
      y->qh[32 * h + l] =
          static_cast<uint8_t>((q[0] >> 4) | ((q[32] >> 4) << 2) |
                               ((q[64] >> 4) << 4) | ((q[96] >> 4) << 6));
    }
  }
}

}  // namespace

void PackScalesMinsK4(const uint8_t sc[8], const uint8_t mn[8],
                      uint8_t packed[12]) {
  for (int s = 0; s < 4; ++s) {
    packed[s] = static_cast<uint8_t>((sc[s] & 63) | ((sc[s + 4] >> 4) << 6));
    packed[s + 4] =
        static_cast<uint8_t>((mn[s] & 63) | ((mn[s + 4] >> 4) << 6));
    packed[s + 8] =
        static_cast<uint8_t>((sc[s + 4] & 15) | ((mn[s + 4] & 15) << 4));
  }
}

void UnpackScalesMinsK4(const uint8_t packed[12], uint8_t sc[8],
                        uint8_t mn[8]) {
  for (int s = 0; s < 4; ++s) {
    sc[s] = packed[s] & 63;
    mn[s] = packed[s + 4] & 63;
    sc[s + 4] =
        static_cast<uint8_t>((packed[s + 8] & 15) | ((packed[s] >> 6) << 4));
    mn[s + 4] = static_cast<uint8_t>((packed[s + 8] >> 4) |
                                     ((packed[s + 4] >> 6) << 4));
  }
}

bool QuantizeBlockQ4_0Weighted(const float* x, const float* importance,
                               BlockQ4_0* y) {
  uint8_t q[32];
  const bool ok = QuantizeSymmetric32(x, importance, 8, &y->d, q);
  PackNibbles32(q, y->qs);
  return ok;
}

bool QuantizeBlockQ4_1Reference(const float* x, const float* importance,
                                BlockQ4_1* y) {
  uint8_t q[32];
  const bool ok = QuantizeAffine32(x, importance, 15, &y->d, &y->m, q);
  PackNibbles32(q, y->qs);
  return ok;
}

bool QuantizeBlockQ5_0Reference(const float* x, const float* importance,
                                BlockQ5_0* y) {
  uint8_t q[32];
  const bool ok = QuantizeSymmetric32(x, importance, 16, &y->d, q);
  PackNibbles32(q, y->qs);
  PackHighBits32(q, y->qh);
  return ok;
}

bool QuantizeBlockQ5_1Reference(const float* x, const float* importance,
                                BlockQ5_1* y) {
  uint8_t q[32];
  const bool ok = QuantizeAffine32(x, importance, 31, &y->d, &y->m, q);
  PackNibbles32(q, y->qs);
  PackHighBits32(q, y->qh);
  return ok;
}

bool QuantizeBlockQ2_KReference(const float* x, const float* importance,
                                BlockQ2_K* y) {
  uint8_t levels[kQkK], sc[16], mn[16];
  const bool ok = QuantizeAffineSuperBlock<16, 3, 15>(x, importance, levels, sc,
                                                      mn, &y->d, &y->dmin);
  for (int s = 0; s < 16; ++s) {
    y->scales[s] = static_cast<uint8_t>(sc[s] | (mn[s] << 4));
  }
  Pack2BitPlanes(levels, y->qs);
  return ok;
}

bool QuantizeBlockQ3_KReference(const float* x, const float* importance,
                                BlockQ3_K* y) {
  uint8_t levels[kQkK];
  int8_t sc[16];
  const bool ok =
      QuantizeSymmetricSuperBlock<4, 32>(x, importance, levels, sc, &y->d);
  std::memset(y->scales, 0, sizeof(y->scales));
  for (int s = 0; s < 16; ++s) SetScaleQ3_K(s, sc[s], y);
  PackLevelsQ3_K(levels, y);
  return ok;
}

bool QuantizeBlockQ4_KReference(const float* x, const float* importance,
                                BlockQ4_K* y) {
  uint8_t levels[kQkK], sc[8], mn[8];
  const bool ok = QuantizeAffineSuperBlock<8, 15, 63>(x, importance, levels, sc,
                                                      mn, &y->d, &y->dmin);
  PackScalesMinsK4(sc, mn, y->scales);
  PackLevelsQ4_K(levels, y);
  return ok;
}

bool QuantizeBlockQ5_KReference(const float* x, const float* importance,
                                BlockQ5_K* y) {
  uint8_t levels[kQkK], sc[8], mn[8];
  const bool ok = QuantizeAffineSuperBlock<8, 31, 63>(x, importance, levels, sc,
                                                      mn, &y->d, &y->dmin);
  PackScalesMinsK4(sc, mn, y->scales);
  PackLevelsQ5_K(levels, y);
  return ok;
}

bool QuantizeBlockQ6_KReference(const float* x, const float* importance,
                                BlockQ6_K* y) {
  uint8_t levels[kQkK];
  const bool ok = QuantizeSymmetricSuperBlock<32, 128>(x, importance, levels,
                                                       y->scales, &y->d);
  PackLevelsQ6_K(levels, y);
  return ok;
}

void DequantizeBlockQ4_1Reference(const BlockQ4_1& block, float* y) {
  const float d = HalfToFloat(block.d), m = HalfToFloat(block.m);
  for (int j = 0; j < 16; ++j) {
    y[j] = static_cast<float>(block.qs[j] & 15) * d + m;
    y[j + 16] = static_cast<float>(block.qs[j] >> 4) * d + m;
  }
}

void DequantizeBlockQ5_0Reference(const BlockQ5_0& block, float* y) {
  const float d = HalfToFloat(block.d);
  for (int j = 0; j < 32; ++j) {
    y[j] = static_cast<float>(Level5(block.qs, block.qh, j) - 16) * d;
  }
}

void DequantizeBlockQ5_1Reference(const BlockQ5_1& block, float* y) {
  const float d = HalfToFloat(block.d), m = HalfToFloat(block.m);
  for (int j = 0; j < 32; ++j) {
    y[j] = static_cast<float>(Level5(block.qs, block.qh, j)) * d + m;
  }
}

void DequantizeBlockQ2_KReference(const BlockQ2_K& block, float* y) {
  const float d = HalfToFloat(block.d), dmin = HalfToFloat(block.dmin);
  for (int e = 0; e < kQkK; ++e) {
    const uint8_t s = block.scales[e / 16];
    y[e] = d * static_cast<float>(s & 15) *
               static_cast<float>(Level2BitPlanes(block.qs, e)) -
           dmin * static_cast<float>(s >> 4);
  }
}

void DequantizeBlockQ3_KReference(const BlockQ3_K& block, float* y) {
  const float d = HalfToFloat(block.d);
  for (int e = 0; e < kQkK; ++e) {
    const int s = e / 16;
    const int stored = ((block.scales[s % 8] >> (s < 8 ? 0 : 4)) & 15) |
                       (((block.scales[8 + s % 4] >> (2 * (s / 4))) & 3) << 4);
    const int high = (block.hmask[e % 32] >> (e / 32)) & 1;
    const int q = Level2BitPlanes(block.qs, e) + 4 * high - 4;
    y[e] = d * static_cast<float>(stored - 32) * static_cast<float>(q);
  }
}

void DequantizeBlockQ4_KReference(const BlockQ4_K& block, float* y) {
  const float d = HalfToFloat(block.d), dmin = HalfToFloat(block.dmin);
  uint8_t sc[8], mn[8];
  UnpackScalesMinsK4(block.scales, sc, mn);
  for (int e = 0; e < kQkK; ++e) {
    const int s = e / 32, i = e / 64, l = e % 32;
    const int q = (block.qs[32 * i + l] >> (4 * (s % 2))) & 15;
    y[e] = d * static_cast<float>(sc[s]) * static_cast<float>(q) -
           dmin * static_cast<float>(mn[s]);
  }
}

void DequantizeBlockQ5_KReference(const BlockQ5_K& block, float* y) {
  const float d = HalfToFloat(block.d), dmin = HalfToFloat(block.dmin);
  uint8_t sc[8], mn[8];
  UnpackScalesMinsK4(block.scales, sc, mn);
  for (int e = 0; e < kQkK; ++e) {
    const int s = e / 32, i = e / 64, l = e % 32;
    const int q = ((block.qs[32 * i + l] >> (4 * (s % 2))) & 15) |
                  (((block.qh[l] >> s) & 1) << 4);
    y[e] = d * static_cast<float>(sc[s]) * static_cast<float>(q) -
           dmin * static_cast<float>(mn[s]);
  }
}

void DequantizeBlockQ6_KReference(const BlockQ6_K& block, float* y) {
  const float d = HalfToFloat(block.d);
  for (int e = 0; e < kQkK; ++e) {
    const int h = e / 128, k = (e % 128) / 32, l = e % 32;
    const int low = (block.ql[64 * h + 32 * (k % 2) + l] >> (4 * (k / 2))) & 15;
    const int high = (block.qh[32 * h + l] >> (2 * k)) & 3;
    y[e] = d * static_cast<float>(block.scales[e / 16]) *
           static_cast<float>((low | (high << 4)) - 32);
  }
}

namespace {

template <typename Block>
Block LoadBlock(const uint8_t* data) {
  Block block;
  std::memcpy(&block, data, sizeof(Block));
  return block;
}

// Element j (< 32) of a Q4_0 / Q4_1 block, as PackNibbles32 puts it.
int Level4(const uint8_t qs[16], int j) {
  return j < 16 ? qs[j] & 15 : qs[j - 16] >> 4;
}

// The k-quants with 8 sub-blocks of 32 (Q4_K, Q5_K): d sc[s] q - dmin mn[s].
template <typename Block>
void AffineK4Grid(const Block& b, BlockGrid* grid) {
  const float d = HalfToFloat(b.d), dmin = HalfToFloat(b.dmin);
  uint8_t sc[8], mn[8];
  UnpackScalesMinsK4(b.scales, sc, mn);
  for (int e = 0; e < kQkK; ++e) {
    grid->step[e] = d * static_cast<float>(sc[e / 32]);
    grid->offset[e] = -(dmin * static_cast<float>(mn[e / 32]));
  }
}

}  // namespace

BlockLevelRange GetBlockLevelRange(GgmlType type) {
  switch (type) {
    case GgmlType::kQ8_0:
      return {-128, 127};
    case GgmlType::kQ4_0:
      return {-8, 7};
    case GgmlType::kQ4_1:
    case GgmlType::kQ4_K:
      return {0, 15};
    case GgmlType::kQ5_0:
      return {-16, 15};
    case GgmlType::kQ5_1:
    case GgmlType::kQ5_K:
      return {0, 31};
    case GgmlType::kQ2_K:
      return {0, 3};
    case GgmlType::kQ3_K:
      return {-4, 3};
    case GgmlType::kQ6_K:
      return {-32, 31};
    default:
      return {0, -1};
  }
}

bool GetBlockGrid(GgmlType type, const uint8_t* data, BlockGrid* grid) {
  const BlockLevelRange range = GetBlockLevelRange(type);
  if (range.max < range.min) return false;
  grid->range = range;
  std::fill(std::begin(grid->offset), std::end(grid->offset), 0.0f);
  switch (type) {
    case GgmlType::kQ8_0: {
      const auto b = LoadBlock<BlockQ8_0>(data);
      for (int j = 0; j < kQk8_0; ++j) {
        grid->step[j] = HalfToFloat(b.d);
        grid->level[j] = b.qs[j];
      }
      return true;
    }
    case GgmlType::kQ4_0: {
      const auto b = LoadBlock<BlockQ4_0>(data);
      for (int j = 0; j < 32; ++j) {
        grid->step[j] = HalfToFloat(b.d);
        grid->level[j] = Level4(b.qs, j) + range.min;
      }
      return true;
    }
    case GgmlType::kQ4_1: {
      const auto b = LoadBlock<BlockQ4_1>(data);
      for (int j = 0; j < 32; ++j) {
        grid->step[j] = HalfToFloat(b.d);
        grid->offset[j] = HalfToFloat(b.m);
        grid->level[j] = Level4(b.qs, j);
      }
      return true;
    }
    case GgmlType::kQ5_0: {
      const auto b = LoadBlock<BlockQ5_0>(data);
      for (int j = 0; j < 32; ++j) {
        grid->step[j] = HalfToFloat(b.d);
        grid->level[j] = Level5(b.qs, b.qh, j) + range.min;
      }
      return true;
    }
    case GgmlType::kQ5_1: {
      const auto b = LoadBlock<BlockQ5_1>(data);
      for (int j = 0; j < 32; ++j) {
        grid->step[j] = HalfToFloat(b.d);
        grid->offset[j] = HalfToFloat(b.m);
        grid->level[j] = Level5(b.qs, b.qh, j);
      }
      return true;
    }
    case GgmlType::kQ2_K: {
      const auto b = LoadBlock<BlockQ2_K>(data);
      const float d = HalfToFloat(b.d), dmin = HalfToFloat(b.dmin);
      for (int e = 0; e < kQkK; ++e) {
        const uint8_t s = b.scales[e / 16];
        grid->step[e] = d * static_cast<float>(s & 15);
        grid->offset[e] = -(dmin * static_cast<float>(s >> 4));
        grid->level[e] = Level2BitPlanes(b.qs, e);
      }
      return true;
    }
    case GgmlType::kQ3_K: {
      const auto b = LoadBlock<BlockQ3_K>(data);
      const float d = HalfToFloat(b.d);
      for (int e = 0; e < kQkK; ++e) {
        grid->step[e] = d * static_cast<float>(ScaleQ3_K(b, e / 16));
        const int high = (b.hmask[e % 32] >> (e / 32)) & 1;
        grid->level[e] = Level2BitPlanes(b.qs, e) + 4 * high + range.min;
      }
      return true;
    }
    case GgmlType::kQ4_K: {
      const auto b = LoadBlock<BlockQ4_K>(data);
      AffineK4Grid(b, grid);
      for (int e = 0; e < kQkK; ++e) {
        grid->level[e] =
            (b.qs[32 * (e / 64) + e % 32] >> (4 * (e / 32 % 2))) & 15;
      }
      return true;
    }
    case GgmlType::kQ5_K: {
      const auto b = LoadBlock<BlockQ5_K>(data);
      AffineK4Grid(b, grid);
      for (int e = 0; e < kQkK; ++e) {
        const int s = e / 32;
        grid->level[e] =
            ((b.qs[32 * (e / 64) + e % 32] >> (4 * (s % 2))) & 15) |
            (((b.qh[e % 32] >> s) & 1) << 4);
      }
      return true;
    }
    case GgmlType::kQ6_K: {
      const auto b = LoadBlock<BlockQ6_K>(data);
      const float d = HalfToFloat(b.d);
      for (int e = 0; e < kQkK; ++e) {
        const int h = e / 128, k = (e % 128) / 32, l = e % 32;
        const int low = (b.ql[64 * h + 32 * (k % 2) + l] >> (4 * (k / 2))) & 15;
        const int high = (b.qh[32 * h + l] >> (2 * k)) & 3;
        grid->step[e] = d * static_cast<float>(b.scales[e / 16]);
        grid->level[e] = (low | (high << 4)) + range.min;
      }
      return true;
    }
    default:
      return false;
  }
}

bool SetBlockLevels(GgmlType type, const int* levels, uint8_t* data) {
  const BlockLevelRange range = GetBlockLevelRange(type);
  if (range.max < range.min) return false;
  const int64_t n = GetGgmlTypeTraits(type).block_size;
  uint8_t stored[kQkK];
  for (int64_t e = 0; e < n; ++e) {
    stored[e] = static_cast<uint8_t>(
        std::min(std::max(levels[e], range.min), range.max) - range.min);
  }
  // Rewrites the block's level fields with `pack`, the rest kept.
  auto repack = [data](auto block, auto pack) {
    std::memcpy(&block, data, sizeof(block));
    pack(block);
    std::memcpy(data, &block, sizeof(block));
    return true;
  };
  switch (type) {
    case GgmlType::kQ8_0:
      return repack(BlockQ8_0{}, [&](BlockQ8_0& b) {
        for (int j = 0; j < kQk8_0; ++j) {
          b.qs[j] = static_cast<int8_t>(stored[j] + range.min);
        }
      });
    case GgmlType::kQ4_0:
      return repack(BlockQ4_0{},
                    [&](BlockQ4_0& b) { PackNibbles32(stored, b.qs); });
    case GgmlType::kQ4_1:
      return repack(BlockQ4_1{},
                    [&](BlockQ4_1& b) { PackNibbles32(stored, b.qs); });
    case GgmlType::kQ5_0:
      return repack(BlockQ5_0{}, [&](BlockQ5_0& b) {
        PackNibbles32(stored, b.qs);
        PackHighBits32(stored, b.qh);
      });
    case GgmlType::kQ5_1:
      return repack(BlockQ5_1{}, [&](BlockQ5_1& b) {
        PackNibbles32(stored, b.qs);
        PackHighBits32(stored, b.qh);
      });
    case GgmlType::kQ2_K:
      return repack(BlockQ2_K{},
                    [&](BlockQ2_K& b) { Pack2BitPlanes(stored, b.qs); });
    case GgmlType::kQ3_K:
      return repack(BlockQ3_K{},
                    [&](BlockQ3_K& b) { PackLevelsQ3_K(stored, &b); });
    case GgmlType::kQ4_K:
      return repack(BlockQ4_K{},
                    [&](BlockQ4_K& b) { PackLevelsQ4_K(stored, &b); });
    case GgmlType::kQ5_K:
      return repack(BlockQ5_K{},
                    [&](BlockQ5_K& b) { PackLevelsQ5_K(stored, &b); });
    case GgmlType::kQ6_K:
      return repack(BlockQ6_K{},
                    [&](BlockQ6_K& b) { PackLevelsQ6_K(stored, &b); });
    default:
      return false;
  }
}

int SubBlockSize(GgmlType type) {
  switch (type) {
    case GgmlType::kQ2_K:
    case GgmlType::kQ3_K:
    case GgmlType::kQ6_K:
      return 16;
    case GgmlType::kQ4_K:
    case GgmlType::kQ5_K:
      return 32;
    default:
      return 0;
  }
}

namespace {

// Sum of w (x - value)^2 over a sub-block rounded onto step * q + offset,
// q in [q_min, q_max] (a zero step holds `offset` alone).
double SubBlockError(const float* x, const float* w, int n, float step,
                     float offset, int q_min, int q_max) {
  const float inverse = step != 0 ? 1.0f / step : 0.0f;
  double total = 0;
  for (int i = 0; i < n; ++i) {
    const float q = step != 0 ? ClampRound((x[i] - offset) * inverse,
                                           static_cast<float>(q_min),
                                           static_cast<float>(q_max))
                              : 0.0f;
    const double e = double{x[i]} - (step * q + offset);
    total += double{w[i]} * e * e;
  }
  return total;
}

// The integer scale (and min) of an affine sub-block (Q2_K, Q4_K, Q5_K)
// against the block's d and dmin: the current pair, or the least-squares
// fit's neighbours on the integer grid, whichever has the least error.
void RefitAffine(const float* x, const float* w, int n, int q_max,
                 int scale_max, float d, float dmin, int& sc, int& mn) {
  auto error = [&](int a, int b) {
    return SubBlockError(x, w, n, d * static_cast<float>(a),
                         -(dmin * static_cast<float>(b)), 0, q_max);
  };
  double best = error(sc, mn);
  const AffineFit fit = FitAffine(x, w, n, q_max, true, nullptr);
  const float a = d > 0 ? fit.scale / d : 0.0f;
  const float b = dmin > 0 ? -fit.offset / dmin : 0.0f;
  for (const float ca : {std::floor(a), std::ceil(a)}) {
    for (const float cb : {std::floor(b), std::ceil(b)}) {
      const int na = RoundClamp(ca, 0, scale_max);
      const int nb = RoundClamp(cb, 0, scale_max);
      const double e = error(na, nb);
      if (e < best) best = e, sc = na, mn = nb;
    }
  }
}

// The same for a symmetric sub-block (Q3_K, Q6_K): levels -q_neg..q_neg-1,
// integer scales -scale_neg..scale_neg-1.
void RefitSymmetric(const float* x, const float* w, int n, int q_neg,
                    int scale_neg, float d, int& sc) {
  auto error = [&](int a) {
    return SubBlockError(x, w, n, d * static_cast<float>(a), 0.0f, -q_neg,
                         q_neg - 1);
  };
  double best = error(sc);
  const float a = d != 0 ? FitSymmetric(x, w, n, q_neg, nullptr) / d : 0.0f;
  for (const float ca : {std::floor(a), std::ceil(a)}) {
    const int na = RoundClamp(ca, -scale_neg, scale_neg - 1);
    const double e = error(na);
    if (e < best) best = e, sc = na;
  }
}

}  // namespace

bool RefitSubBlock(GgmlType type, uint8_t* data, int s, const float* x,
                   const float* weights) {
  const int n = SubBlockSize(type);
  if (n == 0 || s < 0 || s >= kQkK / n) return false;
  switch (type) {
    case GgmlType::kQ2_K: {
      auto b = LoadBlock<BlockQ2_K>(data);
      int sc = b.scales[s] & 15, mn = b.scales[s] >> 4;
      RefitAffine(x, weights, n, 3, 15, HalfToFloat(b.d), HalfToFloat(b.dmin),
                  sc, mn);
      b.scales[s] = static_cast<uint8_t>(sc | (mn << 4));
      std::memcpy(data, &b, sizeof(b));
      return true;
    }
    case GgmlType::kQ3_K: {
      auto b = LoadBlock<BlockQ3_K>(data);
      int sc = ScaleQ3_K(b, s);
      RefitSymmetric(x, weights, n, 4, 32, HalfToFloat(b.d), sc);
      SetScaleQ3_K(s, sc, &b);
      std::memcpy(data, &b, sizeof(b));
      return true;
    }
    case GgmlType::kQ4_K:
    case GgmlType::kQ5_K: {
      // Q4_K's d, dmin and scales are a prefix of Q5_K's fields.
      auto b = LoadBlock<BlockQ4_K>(data);
      uint8_t sc[8], mn[8];
      UnpackScalesMinsK4(b.scales, sc, mn);
      int a = sc[s], m = mn[s];
      RefitAffine(x, weights, n, type == GgmlType::kQ4_K ? 15 : 31, 63,
                  HalfToFloat(b.d), HalfToFloat(b.dmin), a, m);
      sc[s] = static_cast<uint8_t>(a), mn[s] = static_cast<uint8_t>(m);
      PackScalesMinsK4(sc, mn, b.scales);
      std::memcpy(data, &b, offsetof(BlockQ4_K, qs));
      return true;
    }
    case GgmlType::kQ6_K: {
      auto b = LoadBlock<BlockQ6_K>(data);
      int sc = b.scales[s];
      RefitSymmetric(x, weights, n, 32, 128, HalfToFloat(b.d), sc);
      b.scales[s] = static_cast<int8_t>(sc);
      std::memcpy(data, &b, sizeof(b));
      return true;
    }
    default:
      return false;
  }
}

namespace {

template <typename Block, int64_t kBlockElements,
          bool (*kQuantize)(const float*, const float*, Block*)>
bool QuantizeOneBlock(const float* x, const float* importance, uint8_t* out) {
  uint32_t largest = 0;
  for (int64_t i = 0; i < kBlockElements; ++i) {
    largest = std::max(largest, FloatBits(x[i]) & 0x7fffffffu);
  }
  if (largest > kLargestSearchedMagnitudeBits) return false;
  Block block;
  const bool ok = kQuantize(x, importance, &block);
  std::memcpy(out, &block, sizeof(Block));
  return ok;
}

template <typename Block, void (*kDequantize)(const Block&, float*)>
void DequantizeOneBlock(const uint8_t* in, float* y) {
  Block block;
  std::memcpy(&block, in, sizeof(Block));
  kDequantize(block, y);
}

}  // namespace

BlockQuantizeFn GetBlockQuantizer(GgmlType type, bool weighted) {
  switch (type) {
    case GgmlType::kQ4_0:
      return weighted ? QuantizeOneBlock<BlockQ4_0, kQk4_0,
                                         QuantizeBlockQ4_0Weighted>
                      : nullptr;
    case GgmlType::kQ4_1:
      return QuantizeOneBlock<BlockQ4_1, kQk4_1, QuantizeBlockQ4_1Reference>;
    case GgmlType::kQ5_0:
      return QuantizeOneBlock<BlockQ5_0, kQk5_0, QuantizeBlockQ5_0Reference>;
    case GgmlType::kQ5_1:
      return QuantizeOneBlock<BlockQ5_1, kQk5_1, QuantizeBlockQ5_1Reference>;
    case GgmlType::kQ2_K:
      return QuantizeOneBlock<BlockQ2_K, kQkK, QuantizeBlockQ2_KReference>;
    case GgmlType::kQ3_K:
      return QuantizeOneBlock<BlockQ3_K, kQkK, QuantizeBlockQ3_KReference>;
    case GgmlType::kQ4_K:
      return QuantizeOneBlock<BlockQ4_K, kQkK, QuantizeBlockQ4_KReference>;
    case GgmlType::kQ5_K:
      return QuantizeOneBlock<BlockQ5_K, kQkK, QuantizeBlockQ5_KReference>;
    case GgmlType::kQ6_K:
      return QuantizeOneBlock<BlockQ6_K, kQkK, QuantizeBlockQ6_KReference>;
    default:
      return nullptr;
  }
}

BlockDequantizeFn GetBlockDequantizer(GgmlType type) {
  switch (type) {
    case GgmlType::kQ8_0:
      return DequantizeOneBlock<BlockQ8_0, DequantizeBlockQ8_0Reference>;
    case GgmlType::kQ4_0:
      return DequantizeOneBlock<BlockQ4_0, DequantizeBlockQ4_0Reference>;
    case GgmlType::kQ4_1:
      return DequantizeOneBlock<BlockQ4_1, DequantizeBlockQ4_1Reference>;
    case GgmlType::kQ5_0:
      return DequantizeOneBlock<BlockQ5_0, DequantizeBlockQ5_0Reference>;
    case GgmlType::kQ5_1:
      return DequantizeOneBlock<BlockQ5_1, DequantizeBlockQ5_1Reference>;
    case GgmlType::kQ2_K:
      return DequantizeOneBlock<BlockQ2_K, DequantizeBlockQ2_KReference>;
    case GgmlType::kQ3_K:
      return DequantizeOneBlock<BlockQ3_K, DequantizeBlockQ3_KReference>;
    case GgmlType::kQ4_K:
      return DequantizeOneBlock<BlockQ4_K, DequantizeBlockQ4_KReference>;
    case GgmlType::kQ5_K:
      return DequantizeOneBlock<BlockQ5_K, DequantizeBlockQ5_KReference>;
    case GgmlType::kQ6_K:
      return DequantizeOneBlock<BlockQ6_K, DequantizeBlockQ6_KReference>;
    default:
      return nullptr;
  }
}

bool IsQuantizeSupported(GgmlType type) {
  switch (type) {
    case GgmlType::kF32:
    case GgmlType::kF16:
    case GgmlType::kBF16:
    case GgmlType::kQ8_0:
    case GgmlType::kQ4_0:
    case GgmlType::kQ4_1:
    case GgmlType::kQ5_0:
    case GgmlType::kQ5_1:
    case GgmlType::kQ2_K:
    case GgmlType::kQ3_K:
    case GgmlType::kQ4_K:
    case GgmlType::kQ5_K:
    case GgmlType::kQ6_K:
      return true;
    default:
      return false;
  }
}

absl::Status CheckImportance(const float* importance, int64_t n) {
  for (int64_t i = 0; importance != nullptr && i < n; ++i) {
    if (!(importance[i] >= 0) || std::isinf(importance[i])) {
      return absl::InvalidArgumentError(
          absl::StrCat("importance weight ", i, " is ", importance[i],
                       "; weights must be finite and non-negative"));
    }
  }
  return absl::OkStatus();
}

absl::Status CheckQuantizeArgs(GgmlType type, int64_t n) {
  if (!IsQuantizeSupported(type)) {
    return absl::UnimplementedError(absl::StrCat(
        "(de)quantization to ", GgmlTypeName(type), " is not supported yet"));
  }
  return GgmlRowBytes(type, n).status();
}

int64_t FindNonFinite(const float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    if ((FloatBits(x[i]) & 0x7fffffffu) >= 0x7f800000u) return i;
  }
  return -1;
}

namespace {

std::string Position(int64_t row, int64_t column) {
  return row < 0 ? absl::StrCat("element ", column)
                 : absl::StrCat("row ", row, ", column ", column);
}

std::string BlockPosition(int64_t row, int64_t first, int64_t size) {
  const std::string columns = absl::StrCat(first, "..", first + size - 1);
  return row < 0
             ? absl::StrCat("the block of elements ", columns)
             : absl::StrCat("the block at row ", row, ", columns ", columns);
}

bool IsBf16InfOrNan(uint16_t h) { return (h & 0x7fffu) >= 0x7f80u; }

// Whether the block at x (finite values) gets an infinite fp16 scale, and
// its largest magnitude.
bool BlockOverflows(GgmlType type, const float* x, int64_t block,
                    const float* importance, float* amax) {
  *amax = 0.0f;
  for (int64_t j = 0; j < block; ++j) *amax = std::max(*amax, std::fabs(x[j]));
  switch (type) {
    case GgmlType::kF16:
      return !IsFiniteHalf(FloatToHalf(x[0]));
    case GgmlType::kBF16:
      return IsBf16InfOrNan(FloatToBf16(x[0]));
    case GgmlType::kQ8_0:
      return !IsFiniteHalf(FloatToHalf(*amax / 127.0f));
    case GgmlType::kQ4_0:
      if (importance == nullptr) {
        return !IsFiniteHalf(FloatToHalf(*amax / 8.0f));  // +-amax / 8.
      }
      break;
    default:
      break;
  }
  const BlockQuantizeFn searched =
      GetBlockQuantizer(type, importance != nullptr);
  if (searched == nullptr) return false;  // F32.
  alignas(8) uint8_t scratch[kMaxBlockBytes];
  return !searched(x, importance, scratch);
}

}  // namespace

absl::Status CheckRepresentable(GgmlType type, const float* x, int64_t n,
                                int64_t row, const float* importance) {
  const GgmlTypeTraits& traits = GetGgmlTypeTraits(type);
  const int64_t block = traits.block_size;
  for (int64_t first = 0; first + block <= n; first += block) {
    const int64_t bad = FindNonFinite(x + first, block);
    if (bad >= 0) {
      const float v = x[first + bad];
      return absl::InvalidArgumentError(
          absl::StrCat(traits.name, " cannot represent ",
                       std::isnan(v) ? "nan" : (v > 0 ? "inf" : "-inf"), " at ",
                       Position(row, first + bad)));
    }
    float amax;
    if (!BlockOverflows(type, x + first, block,
                        importance == nullptr ? nullptr : importance + first,
                        &amax)) {
      continue;
    }
    if (block == 1) {
      return absl::InvalidArgumentError(
          absl::StrCat(traits.name, " cannot represent ", x[first], " at ",
                       Position(row, first), ": it rounds to infinity"));
    }
    return absl::InvalidArgumentError(absl::StrCat(
        traits.name, " cannot represent ", BlockPosition(row, first, block),
        ": its largest magnitude ", amax, " makes the fp16 scale infinite"));
  }
  return absl::OkStatus();
}

absl::Status QuantizeRowReference(GgmlType type, const float* src, int64_t n,
                                  void* dst, const float* importance) {
  const absl::Status args = CheckQuantizeArgs(type, n);
  if (!args.ok()) return args;
  if (n == 0) return absl::OkStatus();
  if (src == nullptr || dst == nullptr) {
    return absl::InvalidArgumentError("null source or destination buffer");
  }
  const absl::Status weights = CheckImportance(importance, n);
  if (!weights.ok()) return weights;
  const BlockQuantizeFn searched =
      GetBlockQuantizer(type, importance != nullptr);
  uint8_t* out = static_cast<uint8_t*>(dst);
  if (searched != nullptr) {
    // The searched quantizers report unrepresentable blocks themselves; the
    // check then finds the first offender for the message.
    const GgmlTypeTraits& traits = GetGgmlTypeTraits(type);
    bool ok = true;
    for (int64_t first = 0, i = 0; first < n; first += traits.block_size, ++i) {
      ok &= searched(src + first,
                     importance == nullptr ? nullptr : importance + first,
                     out + i * traits.type_size);
    }
    if (ok) return absl::OkStatus();
    const absl::Status representable =
        CheckRepresentable(type, src, n, -1, importance);
    return representable.ok() ? absl::InternalError(
                                    "a block quantizer failed on a block the "
                                    "check accepts")
                              : representable;
  }
  const absl::Status representable = CheckRepresentable(type, src, n, -1);
  if (!representable.ok()) return representable;
  switch (type) {
    case GgmlType::kF32:
      std::memcpy(dst, src, static_cast<size_t>(n) * sizeof(float));
      return absl::OkStatus();
    case GgmlType::kF16:
    case GgmlType::kBF16:
      for (int64_t i = 0; i < n; ++i) {
        const uint16_t h =
            type == GgmlType::kF16 ? FloatToHalf(src[i]) : FloatToBf16(src[i]);
        std::memcpy(out + 2 * i, &h, sizeof(h));
      }
      return absl::OkStatus();
    case GgmlType::kQ8_0:
      QuantizeBlocks<BlockQ8_0, kQk8_0, QuantizeBlockQ8_0Reference>(src, n,
                                                                    dst);
      return absl::OkStatus();
    case GgmlType::kQ4_0:
      QuantizeBlocks<BlockQ4_0, kQk4_0, QuantizeBlockQ4_0Reference>(src, n,
                                                                    dst);
      return absl::OkStatus();
    default:
      break;
  }
  return absl::InternalError("unreachable: type passed CheckQuantizeArgs");
}

absl::Status DequantizeRowReference(GgmlType type, const void* src, int64_t n,
                                    float* dst) {
  const absl::Status args = CheckQuantizeArgs(type, n);
  if (!args.ok()) return args;
  if (n == 0) return absl::OkStatus();
  if (src == nullptr || dst == nullptr) {
    return absl::InvalidArgumentError("null source or destination buffer");
  }
  const uint8_t* in = static_cast<const uint8_t*>(src);
  switch (type) {
    case GgmlType::kF32:
      std::memcpy(dst, src, static_cast<size_t>(n) * sizeof(float));
      return absl::OkStatus();
    case GgmlType::kF16:
    case GgmlType::kBF16:
      for (int64_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, in + 2 * i, sizeof(h));
        dst[i] = type == GgmlType::kF16 ? HalfToFloat(h) : Bf16ToFloat(h);
      }
      return absl::OkStatus();
    default:
      break;
  }
  const BlockDequantizeFn dequantize = GetBlockDequantizer(type);
  const GgmlTypeTraits& traits = GetGgmlTypeTraits(type);
  for (int64_t first = 0, i = 0; first < n; first += traits.block_size, ++i) {
    dequantize(in + i * traits.type_size, dst + first);
  }
  return absl::OkStatus();
}

}  // namespace quant
