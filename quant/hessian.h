// Calibration statistics of one linear layer's inputs: the GPTQ Hessian
// H = 2/N sum_n x_n x_n^T and the per-column mean |x| that AWQ scales by.
// Each batch is multiplied out in float32 through BLAS (ssyrk) and added into
// float64 totals, so that long calibration runs do not lose precision;
// accumulators over different calibration shards merge exactly.
#ifndef QUANT_HESSIAN_H_
#define QUANT_HESSIAN_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace quant {

class HessianAccumulator {
 public:
  explicit HessianAccumulator(int64_t columns);

  int64_t columns() const { return columns_; }
  int64_t samples() const { return samples_; }

  // Adds `n` input rows x [n, columns] (row-major).
  void Add(const float* x, int64_t n);

  // Adds another accumulator's samples (sum x x^T: its lower triangle;
  // the upper one is not kept). InvalidArgument when the column counts
  // differ.
  absl::Status Merge(const HessianAccumulator& other);

  // 2/N sum x x^T, [columns, columns] row-major (zeros before any sample).
  std::vector<double> Hessian() const;

  // Mean |x| per column (zeros before any sample).
  std::vector<double> MeanAbs() const;

  // The running sums, stored exactly where a shard's statistics travel:
  // sum x x^T (lower triangle used) and sum |x|.
  const std::vector<double>& sum_xxt() const { return sum_xxt_; }
  const std::vector<double>& sum_abs() const { return sum_abs_; }
  // Adds stored sums of `samples` rows: sum x x^T as its lower triangle
  // packed row by row (columns * (columns + 1) / 2 doubles) and sum |x|
  // (columns doubles), read bytewise (any alignment). Added to zeros they
  // are the stored sums exactly. InvalidArgument for a negative count.
  absl::Status AddPackedSums(int64_t samples, const void* lower,
                             const void* sum_abs);

  // An accumulator holding `samples` rows' sums, taken over: sum x x^T
  // [columns, columns] row-major (lower triangle used) and sum |x|
  // [columns], as a device accumulated them (kernels/cuda). InvalidArgument
  // when the sizes disagree or the count is negative.
  static absl::StatusOr<HessianAccumulator> FromSums(
      int64_t samples, std::vector<double> sum_xxt,
      std::vector<double> sum_abs);

 private:
  int64_t columns_;
  int64_t samples_ = 0;
  std::vector<double> sum_xxt_;  // Lower triangle used; [columns, columns].
  std::vector<double> sum_abs_;
};

}  // namespace quant

#endif  // QUANT_HESSIAN_H_
