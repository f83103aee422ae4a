// AWQ (Lin et al., 2023), the parts that act on one group of linears:
// AutoAWQ's weight quantizer, the per-input-channel scale search and the
// clipping search. The block-level order (which norm or linear a scale is
// folded into, which module's output the search measures) lives in
// quant/block_quantizer.
//
// A scale s on the input channels of linears that share one input is an
// exact re-parametrization when the producer of that input is divided by s:
// W x = (W diag(s)) (x / s). AWQ picks s so that quantizing W diag(s) loses
// the least on the channels that matter (large activations).
#ifndef QUANT_AWQ_H_
#define QUANT_AWQ_H_

#include <cstdint>
#include <functional>
#include <vector>

#include "absl/status/statusor.h"
#include "model/llama_forward.h"
#include "quant/gptq.h"

namespace quant {

struct AwqOptions {
  int n_grid = 20;          // Scale exponents 0, 1/n, ..., (n - 1)/n.
  bool duo_scaling = true;  // s = x_mean^r / w_mean^(1 - r), else x_mean^r.
  bool clip = true;         // Search a clipping range per group.
  int clip_grid = 20;       // Shrink steps of 1/clip_grid ...
  double max_shrink = 0.5;  // ... down to (1 - max_shrink) of the max.
  // Tokens the clip error is measured on, evenly spaced over all of the
  // calibration data.
  int64_t clip_sample_tokens = 512;
  // The scale search measures its loss on this many calibration sequences
  // (the activation means use all of them).
  int64_t search_sequences = 16;
  // Each block calibrated on the FP model's activations, as AutoAWQ does
  // (the next block's input is the FP block's output); false: on the
  // outputs of the quantized blocks before it, as GPTQ.
  bool fp_inputs = false;
};

// AutoAWQ's pseudo-quantizer for groups of consecutive columns: zero_point:
// scale = max(max - min, 1e-5) / (2^bits - 1), zero = clamp(-round(min /
// scale), 1, 2^bits - 1) (AutoAWQ clamps at 0; 1 keeps every result
// storable in the GPTQ v1 layout too); else scale = max(|w|max, 1e-5) /
// (2^(bits-1) - 1), levels centered at zero 2^(bits-1). Scales are rounded to
// fp16 first.
absl::StatusOr<QuantizedLinear> AwqQuantize(const float* w, int64_t rows,
                                            int64_t cols, int bits,
                                            int group_size, bool zero_point);

struct AwqScaleSearchResult {
  std::vector<float> scales;  // One per input channel.
  double ratio = 0;           // The grid exponent chosen; -1: unscaled.
  double loss = 0;            // Its loss.
  double loss_unscaled = 0;   // The loss with all scales 1 (for reports).
};

// Evaluates the module output error with the given replacement weights (the
// linears of the group, in order, as Q(W diag(s)) diag(s)^-1).
using AwqLossFn =
    std::function<absl::StatusOr<double>(const std::vector<LinearWeights>&)>;

// InvalidArgument unless `bits` is 2 to 8 and `group_size` (-1: whole rows)
// divides the columns of a non-empty [rows, cols] weight.
absl::Status CheckAwqFormat(int64_t rows, int64_t cols, int bits,
                            int group_size);

// Grid search over r: s = (x_mean^r / (w_mean^(1 - r) + 1e-4)) (duo) or
// x_mean^r, clamped at 1e-4, normalized by sqrt(max s * min s); keeps the
// s of least loss. w_mean is the mean over rows of |w| / max|w| of its
// group (the first linear's group size). `formats` holds each linear's
// (zero point: !sym). `x_mean` is the mean |x| per input channel. All scales 1
// is a candidate too, so the measured loss never exceeds the unscaled one.
absl::StatusOr<AwqScaleSearchResult> SearchAwqScales(
    const std::vector<const LinearWeights*>& linears,
    const std::vector<WeightFormat>& formats, const std::vector<double>& x_mean,
    const AwqOptions& options, const AwqLossFn& loss);

// The two halves of SearchAwqScales, for a backend that evaluates its
// candidates elsewhere: w_mean of the linears (group size `group_size`) ...
std::vector<double> AwqWeightMean(
    const std::vector<const LinearWeights*>& linears, int group_size);
// ... and the grid search given a loss for candidate input-channel scales.
using AwqScalesLossFn =
    std::function<absl::StatusOr<double>(const std::vector<float>& scales)>;
absl::StatusOr<AwqScaleSearchResult> SearchAwqScaleGrid(
    const std::vector<double>& x_mean, const std::vector<double>& w_mean,
    const AwqOptions& options, const AwqScalesLossFn& loss);

// Multiplies the input columns of `linear` by `scales`.
void ScaleInputColumns(const std::vector<float>& scales, LinearWeights& linear);
// Divides the output rows (and bias) of `linear` by `scales`.
void DivideOutputRows(const std::vector<float>& scales, LinearWeights& linear);

// What ClipAwq searches over for `tokens` sampled inputs: every step-th
// token (n of them, as AutoAWQ samples), and `shrinks` bounds.
struct AwqClipSearch {
  int64_t step = 1, n = 0;
  int shrinks = 1;
};
AwqClipSearch PlanAwqClip(int64_t tokens, const AwqOptions& options);

// AWQ's clipping search: per row and group, the range max|w| (1 - i /
// clip_grid), i < max_shrink * clip_grid, whose quantized group output on
// the sampled inputs x [tokens, cols] errs least; clamps `linear` to it.
absl::Status ClipAwq(const float* x, int64_t tokens, const WeightFormat& format,
                     const AwqOptions& options, LinearWeights& linear);

}  // namespace quant

#endif  // QUANT_AWQ_H_
