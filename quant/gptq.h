// GPTQ (Frantar et al., 2022) and round-to-nearest for one linear layer,
// as pure functions: (W, H, options) -> (integer levels, scales, zeros,
// g_idx, loss). The options are those of AutoGPTQ / GPTQModel: bits, group
// size, act-order (desc_act), static groups, symmetric or asymmetric levels,
// dampening with automatic increase when the Cholesky factorization fails,
// and the block size of the lazy batch updates.
//
// Conventions follow the GPTQ v1 checkpoints: W is [rows = out_features,
// cols = in_features]; a value is dequantized as scale * (q - zero) with q
// in [0, 2^bits - 1]; each input column c belongs to group g_idx[c], whose
// scales and zeros are [groups, rows].
#ifndef QUANT_GPTQ_H_
#define QUANT_GPTQ_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <vector>

#include "absl/status/statusor.h"
#include "format/ggml_type.h"

namespace quant {

// How one linear's weights are stored: scale * (q - zero), q < 2^bits.
struct WeightFormat {
  int bits = 4;
  int group_size = 128;  // -1: one group per row.
  bool sym = false;      // Symmetric: zero = 2^(bits-1).
};

struct GptqOptions {
  // 2 to 8; the GPTQ v1 checkpoint layout stores 2, 3, 4 and 8 (5 and 6
  // serve GGUF targets).
  int bits = 4;
  int group_size = 128;   // Columns per group; -1: one group per row.
  bool desc_act = false;  // Quantize columns by decreasing Hessian diagonal.
  bool static_groups = false;  // Group parameters from the original weights.
  bool sym = true;             // Symmetric levels (zero at 2^(bits-1)).
  // Group ranges shrunk to minimize sum |q(w) - w|^2.4 (AutoGPTQ's mse).
  bool mse = false;
  double damp_percent = 0.01;  // Of the mean Hessian diagonal, added to it.
  double damp_auto_increment = 0.0025;  // Added until Cholesky succeeds.
  int block_size = 128;                 // Columns per lazy batch update.
  // A group's min-max from the weights as its lazy block began (AutoGPTQ's
  // behaviour) instead of the fully updated weights (the default).
  bool group_params_at_block_start = false;
};

struct QuantizedLinear {
  int64_t rows = 0, cols = 0;
  int bits = 0;
  int group_size = -1;
  std::vector<uint8_t> q;      // [rows, cols], levels in [0, 2^bits).
  std::vector<float> scales;   // [groups, rows].
  std::vector<int32_t> zeros;  // [groups, rows].
  std::vector<int32_t> g_idx;  // [cols]: the group of each input column.
  // Set for a solution on a GGUF type's grid (GptqQuantizeGguf): the rows
  // encoded in that type; q, scales, zeros and g_idx are then empty, bits
  // is the level width and group_size the type's block size.
  std::optional<GgmlType> gguf_type;
  std::vector<uint8_t> gguf_rows;
  int64_t groups() const {
    return rows == 0 ? 0 : static_cast<int64_t>(scales.size()) / rows;
  }
  // scale * (q - zero), or the GGUF rows decoded; [rows, cols].
  std::vector<float> Dequantize() const;
  // Rows [first_row, first_row + count) of Dequantize(), into `out`
  // (count * cols values): a linear decoded a chunk at a time.
  void DequantizeRows(int64_t first_row, int64_t count, float* out) const;
};

struct GptqResult {
  QuantizedLinear quantized;
  // GPTQ's proxy loss: sum over weights of (w - q)^2 / [H^-1]_jj / 2, with
  // the running weights and the Cholesky factor of H^-1.
  double loss = 0;
  double damp_percent_used = 0;
};

// `scale` rounded to fp16 (at least the smallest positive fp16): group
// scales are stored as fp16, so every quantizer uses the stored value.
float RoundScaleToHalf(float scale);

// Round to nearest with min-max group parameters (the baseline): groups of
// `group_size` consecutive columns (-1: whole rows); `mse` as in GptqOptions.
absl::StatusOr<QuantizedLinear> RtnQuantize(const float* w, int64_t rows,
                                            int64_t cols, int bits,
                                            int group_size, bool sym,
                                            bool mse = false);

// The checks every backend's GPTQ makes before solving: InvalidArgument
// naming a bad shape, option or Hessian size.
absl::Status CheckGptqArguments(int64_t rows, int64_t cols,
                                int64_t hessian_entries,
                                const GptqOptions& options);

// `hessian` is [cols, cols] (row-major, symmetric), e.g. 2/N sum x x^T over
// the layer's calibration inputs. Errors: InvalidArgument for bad sizes or
// options; FailedPrecondition when no dampening up to 100% makes H positive
// definite.
absl::StatusOr<GptqResult> GptqQuantize(const float* w, int64_t rows,
                                        int64_t cols,
                                        const std::vector<double>& hessian,
                                        const GptqOptions& options);

// GPTQ onto the grid of GGUF block type `type` itself (Q4_0, Q5_0, Q8_0,
// Q4_1, Q5_1, Q2_K..Q6_K), so that the solution is the file's content, not
// re-fitted into it: when the solve reaches a block (a row's block_size
// consecutive columns), the type's quantizer fits the block's scales (and
// mins) on the running weights with the Hessian diagonal as importance, and
// when it reaches each later sub-block of a k-quant, that sub-block's
// integer scale (and min) is refitted against the block's fp16 d (and dmin)
// on its running weights; each weight is then rounded onto its grid and its
// error fed forward as GPTQ does. With desc_act or static_groups the blocks
// are fitted up front on the original weights. Uses desc_act, static_groups,
// damping, block_size and group_params_at_block_start of `options`.
// InvalidArgument for other types or columns that are not whole blocks.
absl::StatusOr<GptqResult> GptqQuantizeGguf(const float* w, int64_t rows,
                                            int64_t cols,
                                            const std::vector<double>& hessian,
                                            GgmlType type,
                                            const GptqOptions& options);

// GptqQuantizeGguf's grid for a solver outside this file (the GPU's): fitted
// here, on the host, up front or as the solve reaches each group, and read as
// each weight's step and offset (its value is step * level + offset, the
// level rounded from (x - offset) / step and clamped to the type's range; a
// zero step holds max(min, 0)).
class GgufSolveGrid {
 public:
  // GptqQuantizeGguf's checks; `importance` is the Hessian's diagonal.
  static absl::StatusOr<std::unique_ptr<GgufSolveGrid>> Create(
      GgmlType type, int64_t rows, int64_t cols, std::vector<float> importance,
      const GptqOptions& options);
  ~GgufSolveGrid();

  // Columns per group fitted when the solve reaches it (0: every block up
  // front); a group at a block's start reads the block's block_size columns.
  int64_t group_width() const;
  int64_t block_size() const;
  int level_min() const;
  int level_max() const;
  // Up front, on the weights in their original order (dead inputs zeroed).
  absl::Status FitUpFront(const float* w);
  // The group at columns [first, first + width) (solve order is column order
  // here); value(r, k) is row r's running weight at column first + k, for
  // any k < cols - first.
  absl::Status FitGroup(int64_t first, int64_t width,
                        const std::function<float(int64_t, int64_t)>& value);
  // [rows, cols], original column order.
  const float* steps() const;
  const float* offsets() const;
  // The rows in the type, from every weight's level ([rows, cols]).
  QuantizedLinear Take(const std::vector<int>& levels);

 private:
  friend absl::StatusOr<GptqResult> GptqQuantizeGguf(
      const float* w, int64_t rows, int64_t cols,
      const std::vector<double>& hessian, GgmlType type,
      const GptqOptions& options);
  class Impl;
  explicit GgufSolveGrid(std::unique_ptr<Impl> impl);
  static absl::Status CheckTypeAndShape(GgmlType type, int64_t rows,
                                        int64_t cols);
  std::unique_ptr<Impl> impl_;
};

}  // namespace quant

#endif  // QUANT_GPTQ_H_
