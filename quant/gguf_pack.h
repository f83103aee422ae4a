// GPTQ / AWQ solutions written in GGUF block types where the formats
// coincide, with no re-fit: a symmetric group of 32 with zero point
// 2^(bits-1) is exactly a Q4_0 (4 bits), Q5_0 (5 bits) or Q8_0 (8 bits)
// block, d = the group's (fp16) scale and the levels as they are.
#ifndef QUANT_GGUF_PACK_H_
#define QUANT_GGUF_PACK_H_

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "format/ggml_type.h"
#include "quant/gptq.h"

namespace quant {

// The weight format a linear is solved in for GGUF `type`: the grid its
// blocks hold (Q4_0: 4-bit symmetric groups of 32; Q4_K: 4-bit asymmetric
// groups of 32; Q6_K: 6-bit symmetric groups of 16; ...). InvalidArgument
// for a type that is not a quantized block type.
absl::StatusOr<WeightFormat> SolveFormatOfGgmlType(GgmlType type);

// Q4_0, Q5_0 and Q8_0: types whose blocks are GPTQ's symmetric min-max
// groups of 32 (so a GPTQ solution in that format is the type exactly).
bool IsSymmetricGroupOf32Type(GgmlType type);

// True when `linear` is exactly representable in `type` (see above): bits
// and type agree, groups of 32 consecutive columns, every zero point
// 2^(bits-1).
bool FitsGgufTypeExactly(const QuantizedLinear& linear, GgmlType type);

// The rows of `linear` as `type` blocks (rows * GgmlRowBytes(type, cols)
// bytes). InvalidArgument naming the mismatch when it does not fit.
absl::StatusOr<std::vector<uint8_t>> PackGgufRows(const QuantizedLinear& linear,
                                                  GgmlType type);

}  // namespace quant

#endif  // QUANT_GGUF_PACK_H_
