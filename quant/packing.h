// Checkpoint layouts of one quantized linear layer, as the published loaders
// read them:
//
// GPTQ v1 ("gptq" checkpoint_format: AutoGPTQ QuantLinear.pack, GPTQModel,
// transformers/optimum, vLLM gptq, exllama). With W = [rows = out_features,
// cols = in_features] and intweight = q transposed to [cols, rows]:
//   qweight int32 [cols / 32 * bits, rows]: each output column's levels, down
//     the input dimension, as one LSB-first bit stream: level c sits at bit
//     bits * c of the column's stream, word k of the stream being
//     qweight[k, r]. For 2, 4 and 8 bits a word holds 32 / bits whole levels;
//     for 3 bits 32 levels fill 3 words and levels 10 and 21 straddle words
//     (AutoGPTQ's scheme: word 0 holds levels 0-9 and the low 2 bits of level
//     10, word 1 its top bit, levels 11-20 and the low bit of level 21, word
//     2 the top 2 bits of level 21 and levels 22-31).
//   qzeros int32 [groups, rows / 32 * bits]: each group's zero points minus
//     one, (zero - 1) & (2^bits - 1), as the same bit stream along the
//     output dimension. Loaders read ((field) & mask) + 1.
//   scales fp16 [groups, rows]; g_idx int32 [cols], the group of each input
//     column (any order: act-order / desc_act checkpoints keep qweight in the
//     original column order and permute only through g_idx).
//
// AWQ GEMM (AutoAWQ WQLinear_GEMM, "version": "gemm"), 4 bits only:
//   qweight int32 [cols, rows / 8]: for input row c and output pack p,
//     nibble i (bits 4i..4i+3) holds q[p * 8 + kAwqOrder[i], c] with
//     kAwqOrder = {0, 2, 4, 6, 1, 3, 5, 7}.
//   qzeros int32 [groups, rows / 8], the same order, holding the zero point
//     itself (no minus one); scales fp16 [groups, rows]. Groups are
//     consecutive input columns (g_idx[c] == c / group_size), no act-order.
//
// The zero point 0 under GPTQ v1 has no correct encoding. PackGptqV1 stores
// (0 - 1) & mask = 2^bits - 1 in that field alone. Field-wise v1 loaders
// (AutoGPTQ's torch path and CUDA kernels, vLLM's gptq_gemm, exllama) read it
// as zero 2^bits, shifting the group by 2^bits * scale; GPTQModel, which
// turns v1 into v2 by adding 0x11111111-style constants to whole words, reads
// it as 0 but carries 1 into the next field. (AutoGPTQ's own pack ORs the
// unmasked -1 and so overwrites every higher field of the word.)
// UnpackGptqV1 returns the field-wise reading, 2^bits. Callers that can
// produce zero 0 (asymmetric grids of all non-negative groups) must check
// GptqV1UnrepresentableZeros() first.
#ifndef QUANT_PACKING_H_
#define QUANT_PACKING_H_

#include <array>
#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "quant/gptq.h"

namespace quant {

// Nibble i of an AWQ GEMM word holds output column 8 * pack + kAwqOrder[i].
inline constexpr std::array<int, 8> kAwqOrder = {0, 2, 4, 6, 1, 3, 5, 7};

struct PackedGptqV1 {
  int64_t rows = 0;  // out_features
  int64_t cols = 0;  // in_features
  int bits = 0;      // 2, 3, 4 or 8
  int64_t groups = 0;
  std::vector<int32_t> qweight;  // [cols / 32 * bits, rows]
  std::vector<int32_t> qzeros;   // [groups, rows / 32 * bits]
  std::vector<uint16_t> scales;  // fp16 bits, [groups, rows]
  std::vector<int32_t> g_idx;    // [cols]

  std::vector<int64_t> qweight_shape() const {
    return {cols * bits / 32, rows};
  }
  std::vector<int64_t> qzeros_shape() const {
    return {groups, rows * bits / 32};
  }
  std::vector<int64_t> scales_shape() const { return {groups, rows}; }
  std::vector<int64_t> g_idx_shape() const { return {cols}; }
};

struct PackedAwqGemm {
  int64_t rows = 0;  // out_features
  int64_t cols = 0;  // in_features
  int64_t groups = 0;
  std::vector<int32_t> qweight;  // [cols, rows / 8]
  std::vector<int32_t> qzeros;   // [groups, rows / 8]
  std::vector<uint16_t> scales;  // fp16 bits, [groups, rows]

  std::vector<int64_t> qweight_shape() const { return {cols, rows / 8}; }
  std::vector<int64_t> qzeros_shape() const { return {groups, rows / 8}; }
  std::vector<int64_t> scales_shape() const { return {groups, rows}; }
};

// Requires bits 2, 3, 4 or 8; cols % 32 == 0 and rows % 32 == 0 (AutoGPTQ and
// GPTQModel allocate qweight [in // 32 * bits, out] and qzeros
// [groups, out // 32 * bits], so other shapes do not load even where they
// would fill whole words); levels and zero points in [0, 2^bits); g_idx in
// [0, groups); scales finite in fp16 (rounded to nearest even).
// InvalidArgument names the first problem.
absl::StatusOr<PackedGptqV1> PackGptqV1(const QuantizedLinear& linear);

// The inverse, as a loader reads it: zero points are field + 1, in
// [1, 2^bits]; scales are the fp16 values. `group_size` is only recorded
// (the checkpoint's quantize_config value; g_idx carries the grouping).
// InvalidArgument when sizes disagree with the shape fields, bits is
// unsupported, or g_idx is out of range.
absl::StatusOr<QuantizedLinear> UnpackGptqV1(const PackedGptqV1& packed,
                                             int group_size);

// Zero points equal to 0, which GPTQ v1 cannot store (see above).
int64_t GptqV1UnrepresentableZeros(const QuantizedLinear& linear);

// Requires bits 4, rows % 8 == 0, groups of `group_size` consecutive columns
// (g_idx[c] == c / group_size; -1: one group), cols % group_size == 0, levels
// and zero points in [0, 16), scales finite in fp16.
absl::StatusOr<PackedAwqGemm> PackAwqGemm(const QuantizedLinear& linear);

// The inverse; g_idx is rebuilt as c / (cols / groups). `group_size` must be
// cols / groups, or -1 with one group.
absl::StatusOr<QuantizedLinear> UnpackAwqGemm(const PackedAwqGemm& packed,
                                              int group_size);

}  // namespace quant

#endif  // QUANT_PACKING_H_
