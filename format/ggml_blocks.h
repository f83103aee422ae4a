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
// F16), and Q8_0 / Q4_0 blocks whose fp16 scale rounds to infinity (largest
// |x| above about 8.3e6 for Q8_0, 524000 for Q4_0). The error is
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

// One block, scalar reference. `x` holds the block's kQk* values and must be
// finite (the row functions check); non-finite input gives defined but
// meaningless bytes.
void QuantizeBlockQ8_0Reference(const float* x, BlockQ8_0* y);
void QuantizeBlockQ4_0Reference(const float* x, BlockQ4_0* y);
void DequantizeBlockQ8_0Reference(const BlockQ8_0& block, float* y);
void DequantizeBlockQ4_0Reference(const BlockQ4_0& block, float* y);

// Types QuantizeRowReference and DequantizeRowReference handle: F32, F16,
// BF16, Q8_0, Q4_0 for now.
bool IsQuantizeSupported(GgmlType type);

// Checks every (de)quantizer applies before touching data: the type is
// supported, `n` >= 0 is a multiple of its block size, and `importance` (if
// given) is usable for it. Errors: Unimplemented for an unsupported type or
// an importance-weighted quantizer not written yet; InvalidArgument for a bad
// `n`.
absl::Status CheckQuantizeArgs(GgmlType type, int64_t n,
                               const float* importance);

// Quantizes `n` floats into GgmlRowBytes(type, n) bytes at `dst`.
// `importance` is optional per-element weights (llama.cpp's imatrix entries
// for the row's columns, `n` of them). As in llama.cpp, the plain types and
// Q8_0 ignore it; Q4_0 with weights uses a different search that is not
// implemented yet (Unimplemented). Later types (Q4_1, Q5_x, K-quants) take
// the same argument.
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
                                int64_t row);

}  // namespace quant

#endif  // FORMAT_GGML_BLOCKS_H_
