// GGUF tensor block layouts (as llama.cpp's ggml-common.h defines them) and
// the scalar reference quantizers: the oracle every optimized path (kernels/)
// is tested against, byte for byte.
//
// Bit-compatibility: for finite input, QuantizeRowReference writes the same
// bytes as llama.cpp's quantize_row_q8_0_ref / quantize_row_q4_0_ref (and
// ggml's fp32 -> f16 / bf16 row conversions). Where llama.cpp's C code
// converts an out-of-range float to int8_t (undefined behaviour in C; only
// reachable for blocks whose largest |x| is below ~4e-37, where 1/d
// overflows to inf), this code spells out what x86 does there (cvttss2si:
// truncate toward zero, NaN or out of int32 range gives INT32_MIN; then keep
// the low byte), which is what an x86 build of llama.cpp writes: such blocks
// come out as d = +-0 with all quants 0. (Checked against llama.cpp's own
// ggml-quants.c, built with gcc -O3, on 6M random blocks including these.)
//
// Unrepresentable input: every quantizer refuses input whose output
// llama.cpp would refuse (ggml_validate_row_data, which llama-quantize runs on
// what it writes and the loader on what it reads): NaN or infinite values for
// every type, F16 and BF16 values that round to infinity (|x| >= 65520 for
// F16), and blocks whose fp16 scale (or offset) rounds to infinity (largest
// |x| above about 8.3e6 for Q8_0, 524000 for Q4_0, 65504 for the offsets of
// Q4_1 / Q5_1). The error is
// InvalidArgument naming the first offender; `dst` may then be partly
// written.
#ifndef FORMAT_GGML_BLOCKS_H_
#define FORMAT_GGML_BLOCKS_H_

#include <cstdint>

#include "absl/status/status.h"
#include "format/ggml_type.h"

namespace quant {

// Q8_0: 32 signed 8-bit values with one fp16 scale; x ~= qs[j] * d.
inline constexpr int64_t kQk8_0 = 32;
struct BlockQ8_0 {
  uint16_t d;  // IEEE half: amax / 127.
  int8_t qs[kQk8_0];
};
static_assert(kQk8_0 == GetGgmlTypeTraits(GgmlType::kQ8_0).block_size,
              "Q8_0 block size");
static_assert(sizeof(BlockQ8_0) == GetGgmlTypeTraits(GgmlType::kQ8_0).type_size,
              "Q8_0 block bytes");

// Q4_0: 32 unsigned 4-bit values with one fp16 scale; x ~= (q - 8) * d.
// Byte j holds element j in its low nibble and element j + 16 in its high.
inline constexpr int64_t kQk4_0 = 32;
struct BlockQ4_0 {
  uint16_t d;  // IEEE half: (value of largest magnitude, signed) / -8.
  uint8_t qs[kQk4_0 / 2];
};
static_assert(kQk4_0 == GetGgmlTypeTraits(GgmlType::kQ4_0).block_size,
              "Q4_0 block size");
static_assert(sizeof(BlockQ4_0) == GetGgmlTypeTraits(GgmlType::kQ4_0).type_size,
              "Q4_0 block bytes");

// Q4_1: 32 unsigned 4-bit values, fp16 scale and offset; x ~= q * d + m.
// Nibble order as Q4_0.
inline constexpr int64_t kQk4_1 = 32;
struct BlockQ4_1 {
  uint16_t d;
  uint16_t m;
  uint8_t qs[kQk4_1 / 2];
};
static_assert(kQk4_1 == GetGgmlTypeTraits(GgmlType::kQ4_1).block_size,
              "Q4_1 block size");
static_assert(sizeof(BlockQ4_1) == GetGgmlTypeTraits(GgmlType::kQ4_1).type_size,
              "Q4_1 block bytes");

// Q5_0: 32 unsigned 5-bit values, fp16 scale; x ~= (q - 16) * d. The low
// nibbles as Q4_0; bit j of the little-endian word qh is bit 4 of element j.
inline constexpr int64_t kQk5_0 = 32;
struct BlockQ5_0 {
  uint16_t d;
  uint8_t qh[4];
  uint8_t qs[kQk5_0 / 2];
};
static_assert(kQk5_0 == GetGgmlTypeTraits(GgmlType::kQ5_0).block_size,
              "Q5_0 block size");
static_assert(sizeof(BlockQ5_0) == GetGgmlTypeTraits(GgmlType::kQ5_0).type_size,
              "Q5_0 block bytes");

// Q5_1: as Q5_0 with an offset; x ~= q * d + m.
inline constexpr int64_t kQk5_1 = 32;
struct BlockQ5_1 {
  uint16_t d;
  uint16_t m;
  uint8_t qh[4];
  uint8_t qs[kQk5_1 / 2];
};
static_assert(kQk5_1 == GetGgmlTypeTraits(GgmlType::kQ5_1).block_size,
              "Q5_1 block size");
static_assert(sizeof(BlockQ5_1) == GetGgmlTypeTraits(GgmlType::kQ5_1).type_size,
              "Q5_1 block bytes");

// The k-quants: super-blocks of 256 values in sub-blocks of 16 or 32, each
// sub-block with its own small integer scale (and min) that multiplies the
// super-block's fp16 d (and dmin).
inline constexpr int64_t kQkK = 256;

// Q2_K: 16 sub-blocks of 16; x ~= d * (scales[s] & 15) * q
// - dmin * (scales[s] >> 4), q in 0..3. Element e = 128 h + 32 k + l
// (h < 2, k < 4, l < 32) has its q in bits 2k..2k+1 of qs[32 h + l].
struct BlockQ2_K {
  uint8_t scales[kQkK / 16];
  uint8_t qs[kQkK / 4];
  uint16_t d;
  uint16_t dmin;
};
static_assert(kQkK == GetGgmlTypeTraits(GgmlType::kQ2_K).block_size,
              "Q2_K block size");
static_assert(sizeof(BlockQ2_K) == GetGgmlTypeTraits(GgmlType::kQ2_K).type_size,
              "Q2_K block bytes");

// Q3_K: 16 sub-blocks of 16; x ~= d * (scale[s] - 32) * (q - 4), q in 0..7.
// The low 2 bits of q are placed as in Q2_K; bit 2 of element e is bit
// e / 32 of hmask[e % 32]. The 6-bit scales: bits 0..3 of scale s are the
// low (s < 8) or high (s >= 8) nibble of scales[s % 8]; bits 4..5 are bits
// 2 (s / 4)..2 (s / 4) + 1 of scales[8 + s % 4].
struct BlockQ3_K {
  uint8_t hmask[kQkK / 8];
  uint8_t qs[kQkK / 4];
  uint8_t scales[12];
  uint16_t d;
};
static_assert(kQkK == GetGgmlTypeTraits(GgmlType::kQ3_K).block_size,
              "Q3_K block size");
static_assert(sizeof(BlockQ3_K) == GetGgmlTypeTraits(GgmlType::kQ3_K).type_size,
              "Q3_K block bytes");

// Q4_K: 8 sub-blocks of 32; x ~= d * sc[s] * q - dmin * mn[s], q in 0..15,
// sc and mn 6-bit (packed as PackScalesMinsK4 describes). Sub-blocks 2 i and
// 2 i + 1 share qs[32 i .. 32 i + 31]: low nibbles, then high nibbles.
struct BlockQ4_K {
  uint16_t d;
  uint16_t dmin;
  uint8_t scales[12];
  uint8_t qs[kQkK / 2];
};
static_assert(kQkK == GetGgmlTypeTraits(GgmlType::kQ4_K).block_size,
              "Q4_K block size");
static_assert(sizeof(BlockQ4_K) == GetGgmlTypeTraits(GgmlType::kQ4_K).type_size,
              "Q4_K block bytes");

// Q5_K: Q4_K with q in 0..31; bit 4 of element 32 s + l is bit s of qh[l].
struct BlockQ5_K {
  uint16_t d;
  uint16_t dmin;
  uint8_t scales[12];
  uint8_t qh[kQkK / 8];
  uint8_t qs[kQkK / 2];
};
static_assert(kQkK == GetGgmlTypeTraits(GgmlType::kQ5_K).block_size,
              "Q5_K block size");
static_assert(sizeof(BlockQ5_K) == GetGgmlTypeTraits(GgmlType::kQ5_K).type_size,
              "Q5_K block bytes");

// Q6_K: 16 sub-blocks of 16; x ~= d * scales[s] * (q - 32), q in 0..63.
// Element e = 128 h + 32 k + l: low nibble in ql[64 h + 32 (k % 2) + l]
// (low half for k < 2, high half otherwise), bits 4..5 in bits 2k..2k+1 of
// qh[32 h + l].
struct BlockQ6_K {
  uint8_t ql[kQkK / 2];
  uint8_t qh[kQkK / 4];
  int8_t scales[kQkK / 16];
  uint16_t d;
};
static_assert(kQkK == GetGgmlTypeTraits(GgmlType::kQ6_K).block_size,
              "Q6_K block size");
static_assert(sizeof(BlockQ6_K) == GetGgmlTypeTraits(GgmlType::kQ6_K).type_size,
              "Q6_K block bytes");

// Q4_K / Q5_K 6-bit scale and min packing: for s < 4, scales[s] and
// scales[s + 4] hold sc[s] and mn[s] in their low 6 bits; for s >= 4,
// scales[s + 4] holds the low nibbles of sc[s] (low) and mn[s] (high), and
// the top 2 bits of sc[s] and mn[s] go to bits 6..7 of scales[s - 4] and
// scales[s].
void PackScalesMinsK4(const uint8_t sc[8], const uint8_t mn[8],
                      uint8_t packed[12]);
void UnpackScalesMinsK4(const uint8_t packed[12], uint8_t sc[8], uint8_t mn[8]);

// One block, scalar reference. `x` holds the block's values and must be
// finite (the row functions check); non-finite input gives defined but
// meaningless bytes.
void QuantizeBlockQ8_0Reference(const float* x, BlockQ8_0* y);
void QuantizeBlockQ4_0Reference(const float* x, BlockQ4_0* y);
void DequantizeBlockQ8_0Reference(const BlockQ8_0& block, float* y);
void DequantizeBlockQ4_0Reference(const BlockQ4_0& block, float* y);

// The searched types (format/scale_fit.h). `importance` is null or the
// block's per-column weights. They return false when a scale does not fit
// in fp16 (the block is then unrepresentable).
bool QuantizeBlockQ4_0Weighted(const float* x, const float* importance,
                               BlockQ4_0* y);
bool QuantizeBlockQ4_1Reference(const float* x, const float* importance,
                                BlockQ4_1* y);
bool QuantizeBlockQ5_0Reference(const float* x, const float* importance,
                                BlockQ5_0* y);
bool QuantizeBlockQ5_1Reference(const float* x, const float* importance,
                                BlockQ5_1* y);
bool QuantizeBlockQ2_KReference(const float* x, const float* importance,
                                BlockQ2_K* y);
bool QuantizeBlockQ3_KReference(const float* x, const float* importance,
                                BlockQ3_K* y);
bool QuantizeBlockQ4_KReference(const float* x, const float* importance,
                                BlockQ4_K* y);
bool QuantizeBlockQ5_KReference(const float* x, const float* importance,
                                BlockQ5_K* y);
bool QuantizeBlockQ6_KReference(const float* x, const float* importance,
                                BlockQ6_K* y);
void DequantizeBlockQ4_1Reference(const BlockQ4_1& block, float* y);
void DequantizeBlockQ5_0Reference(const BlockQ5_0& block, float* y);
void DequantizeBlockQ5_1Reference(const BlockQ5_1& block, float* y);
void DequantizeBlockQ2_KReference(const BlockQ2_K& block, float* y);
void DequantizeBlockQ3_KReference(const BlockQ3_K& block, float* y);
void DequantizeBlockQ4_KReference(const BlockQ4_K& block, float* y);
void DequantizeBlockQ5_KReference(const BlockQ5_K& block, float* y);
void DequantizeBlockQ6_KReference(const BlockQ6_K& block, float* y);

// Types QuantizeRowReference and DequantizeRowReference handle: F32, F16,
// BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K..Q6_K.
bool IsQuantizeSupported(GgmlType type);

// Checks every (de)quantizer applies before touching data: the type is
// supported and `n` >= 0 is a multiple of its block size. Errors:
// Unimplemented for an unsupported type; InvalidArgument for a bad `n`.
absl::Status CheckQuantizeArgs(GgmlType type, int64_t n);

// InvalidArgument naming the first importance weight (of `n`; null is fine)
// that is negative, infinite or NaN.
absl::Status CheckImportance(const float* importance, int64_t n);

// Block-level entry points of the block types, for the row kernels:
// quantize one block (its block_size values at `x`, importance null or the
// block's weights) into type_size bytes at `out`, returning false when the
// block is unrepresentable (non-finite values, an infinite fp16 scale).
// GetBlockQuantizer gives the searched quantizers (every block type but Q8_0
// and Q4_0; Q4_0 too when `weighted`), else null.
using BlockQuantizeFn = bool (*)(const float* x, const float* importance,
                                 uint8_t* out);
using BlockDequantizeFn = void (*)(const uint8_t* in, float* y);
BlockQuantizeFn GetBlockQuantizer(GgmlType type, bool weighted);
BlockDequantizeFn GetBlockDequantizer(GgmlType type);  // Block types.
inline constexpr int64_t kMaxBlockBytes = sizeof(BlockQ6_K);

// The values a quantized block holds with its scales (and mins) as they
// are: element e is step[e] * level + offset[e] for an integer level in
// [range.min, range.max]. Solvers that choose levels themselves (GPTQ on a
// GGUF type's grid) read a fitted block's grid and write their levels back.
struct BlockLevelRange {
  int min = 0;
  int max = -1;  // Below min: not a block type with levels.
};
// Q8_0 -128..127, Q4_0 -8..7, Q4_1 / Q4_K 0..15, Q5_0 -16..15, Q5_1 / Q5_K
// 0..31, Q2_K 0..3, Q3_K -4..3, Q6_K -32..31; {0, -1} for other types.
BlockLevelRange GetBlockLevelRange(GgmlType type);
struct BlockGrid {
  BlockLevelRange range;
  float step[kQkK];
  float offset[kQkK];
  int level[kQkK];  // The levels the block holds.
};
// The grid of one block of `type` (the block types GetBlockDequantizer
// serves); step * level + offset equals what the dequantizer computes
// (zeros may differ in sign). False for other types.
bool GetBlockGrid(GgmlType type, const uint8_t* block, BlockGrid* grid);
// Replaces the levels of a block (block_size of them, clamped to the type's
// range), keeping its scales and mins. False for other types.
bool SetBlockLevels(GgmlType type, const int* levels, uint8_t* block);
// Elements per sub-block of the k-quants (Q2_K, Q3_K, Q6_K: 16; Q4_K, Q5_K:
// 32); 0 for other types.
int SubBlockSize(GgmlType type);
// Re-chooses sub-block s's integer scale (and min) of a k-quant block for
// the values x[0..SubBlockSize) with weights w (>= 0), keeping the block's
// fp16 d and dmin and every other sub-block: the least-squares fit's
// neighbours on the integer grid replace the current choice only where
// their weighted error (levels rounded to nearest) is lower. The levels are
// not touched (see SetBlockLevels). False for other types or a bad s.
bool RefitSubBlock(GgmlType type, uint8_t* block, int s, const float* x,
                   const float* w);

// The searched quantizers (and their optimized twins) refuse blocks with a
// value beyond 2^30 in magnitude: no searched format has a scale reaching
// that far (fp16 tops out at 65504, times at most 31 levels and 63 sub-block
// steps). Compared as bits of |x|, which order like the floats, with NaN
// and inf above every finite value.
inline constexpr uint32_t kLargestSearchedMagnitudeBits = 0x4e800000u;

// Quantizes `n` floats into GgmlRowBytes(type, n) bytes at `dst`.
// `importance` is optional per-element weights (llama.cpp's imatrix entries
// for the row's columns, `n` of them: the diagonal of the layer's input
// Hessian). As in llama.cpp, the plain types and Q8_0 ignore it; Q4_0, Q4_1,
// Q5_0 and Q5_1 are min-max quantizers without it (Q4_0 bit-identical to
// llama.cpp's) and weighted searches with it; the k-quants always search,
// weighting each value by importance (1 if absent) times
// sqrt(mean x^2 + x^2) over its super-block.
absl::Status QuantizeRowReference(GgmlType type, const float* src, int64_t n,
                                  void* dst, const float* importance = nullptr);

// Expands GgmlRowBytes(type, n) bytes at `src` into `n` floats.
absl::Status DequantizeRowReference(GgmlType type, const void* src, int64_t n,
                                    float* dst);

// Index of the first NaN or infinite value among x[0..n), or -1.
int64_t FindNonFinite(const float* x, int64_t n);

// OK when x[0..n) (`n` a multiple of the block size of a supported type)
// quantizes to data llama.cpp accepts; else InvalidArgument for the first
// offending value or block (see "Unrepresentable input" above). `row` >= 0
// makes the message say "row R, column C", else "element C".
absl::Status CheckRepresentable(GgmlType type, const float* x, int64_t n,
                                int64_t row, const float* importance = nullptr);

}  // namespace quant

#endif  // FORMAT_GGML_BLOCKS_H_
