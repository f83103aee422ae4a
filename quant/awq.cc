#include "quant/awq.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace quant {

absl::Status CheckAwqFormat(int64_t rows, int64_t cols, int bits,
                            int group_size) {
  if (bits < 2 || bits > 8) {
    return absl::InvalidArgumentError(
        absl::StrCat("AWQ bits must be 2 to 8, not ", bits));
  }
  if (rows <= 0 || cols <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("weight shape [", rows, ", ", cols, "] is empty"));
  }
  if (group_size == 0 || group_size < -1 ||
      (group_size > 0 && cols % group_size != 0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("AWQ group size ", group_size, " does not divide ", cols,
                     " input channels"));
  }
  return absl::OkStatus();
}

namespace {

// The dequantized weights of AwqQuantize, for the searches.
std::vector<float> PseudoQuantize(const float* w, int64_t rows, int64_t cols,
                                  int bits, int group_size, bool zero_point) {
  absl::StatusOr<QuantizedLinear> q =
      AwqQuantize(w, rows, cols, bits, group_size, zero_point);
  return q->Dequantize();  // Shapes were checked by the caller.
}

}  // namespace

absl::StatusOr<QuantizedLinear> AwqQuantize(const float* w, int64_t rows,
                                            int64_t cols, int bits,
                                            int group_size, bool zero_point) {
  RETURN_IF_ERROR(CheckAwqFormat(rows, cols, bits, group_size));
  const int64_t width = group_size < 0 ? cols : group_size;
  const int64_t groups = cols / width;
  const int maxq = (1 << bits) - 1;
  QuantizedLinear out;
  out.rows = rows, out.cols = cols, out.bits = bits;
  out.group_size = group_size;
  out.q.resize(static_cast<size_t>(rows * cols));
  out.scales.resize(static_cast<size_t>(groups * rows));
  out.zeros.resize(static_cast<size_t>(groups * rows));
  out.g_idx.resize(static_cast<size_t>(cols));
  for (int64_t c = 0; c < cols; ++c)
    out.g_idx[c] = static_cast<int32_t>(c / width);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t g = 0; g < groups; ++g) {
      const float* x = w + r * cols + g * width;
      float lo = x[0], hi = x[0], largest = 0;
      for (int64_t k = 0; k < width; ++k) {
        lo = std::min(lo, x[k]);
        hi = std::max(hi, x[k]);
        largest = std::max(largest, std::fabs(x[k]));
      }
      float scale;
      int32_t zero;
      if (zero_point) {
        scale = RoundScaleToHalf(std::max(hi - lo, 1e-5f) /
                                 static_cast<float>(maxq));
        // At least 1 (as in quant/gptq): the GPTQ v1 layout cannot store a
        // zero point of 0, and AWQ results are written in it too.
        zero = static_cast<int32_t>(
            std::min(std::max(-std::nearbyint(lo / scale), 1.0f), float(maxq)));
      } else {
        scale = RoundScaleToHalf(std::max(largest, 1e-5f) /
                                 static_cast<float>((1 << (bits - 1)) - 1));
        zero = 1 << (bits - 1);
      }
      out.scales[g * rows + r] = scale;
      out.zeros[g * rows + r] = zero;
      for (int64_t k = 0; k < width; ++k) {
        const float level =
            std::nearbyint(x[k] / scale) + static_cast<float>(zero);
        out.q[r * cols + g * width + k] = static_cast<int32_t>(
            std::min(std::max(level, 0.0f), static_cast<float>(maxq)));
      }
    }
  }
  return out;
}

absl::StatusOr<AwqScaleSearchResult> SearchAwqScales(
    const std::vector<const LinearWeights*>& linears,
    const std::vector<WeightFormat>& formats, const std::vector<double>& x_mean,
    const AwqOptions& options, const AwqLossFn& loss) {
  if (linears.empty() || formats.size() != linears.size()) {
    return absl::InvalidArgumentError(
        "AWQ needs linears to scale, each with its weight format");
  }
  const int64_t cols = linears[0]->cols;
  if (static_cast<int64_t>(x_mean.size()) != cols) {
    return absl::InvalidArgumentError(absl::StrCat(
        x_mean.size(), " activation means for ", cols, " input channels"));
  }
  for (size_t i = 0; i < linears.size(); ++i) {
    if (linears[i]->cols != cols) {
      return absl::InvalidArgumentError(
          "the linears of one AWQ group must share their input");
    }
    RETURN_IF_ERROR(CheckAwqFormat(linears[i]->rows, cols, formats[i].bits,
                                   formats[i].group_size));
  }
  auto quantized_with = [&](const std::vector<float>& s) {
    std::vector<LinearWeights> replaced;
    for (size_t i = 0; i < linears.size(); ++i) {
      const WeightFormat& f = formats[i];
      LinearWeights scaled = *linears[i];
      ScaleInputColumns(s, scaled);
      scaled.weight = PseudoQuantize(scaled.weight.data(), scaled.rows, cols,
                                     f.bits, f.group_size, !f.sym);
      std::vector<float> inverse(s.size());
      for (size_t i = 0; i < s.size(); ++i) inverse[i] = 1.0f / s[i];
      ScaleInputColumns(inverse, scaled);
      replaced.push_back(std::move(scaled));
    }
    return replaced;
  };
  return SearchAwqScaleGrid(
      x_mean, AwqWeightMean(linears, formats[0].group_size), options,
      [&](const std::vector<float>& s) { return loss(quantized_with(s)); });
}

std::vector<double> AwqWeightMean(
    const std::vector<const LinearWeights*>& linears, int group_size) {
  // |w| relative to its group's max, averaged over every row.
  const int64_t cols = linears[0]->cols;
  const int64_t width = group_size < 0 ? cols : group_size;
  std::vector<double> w_mean(static_cast<size_t>(cols), 0.0);
  int64_t total_rows = 0;
  for (const LinearWeights* linear : linears) {
    for (int64_t r = 0; r < linear->rows; ++r) {
      const float* row = linear->weight.data() + r * cols;
      for (int64_t first = 0; first < cols; first += width) {
        float largest = 0;
        for (int64_t k = first; k < first + width; ++k)
          largest = std::max(largest, std::fabs(row[k]));
        for (int64_t k = first; k < first + width; ++k)
          w_mean[k] += std::fabs(row[k]) / (largest + 1e-6);
      }
    }
    total_rows += linear->rows;
  }
  for (double& m : w_mean) m /= static_cast<double>(total_rows);
  return w_mean;
}

absl::StatusOr<AwqScaleSearchResult> SearchAwqScaleGrid(
    const std::vector<double>& x_mean, const std::vector<double>& w_mean,
    const AwqOptions& options, const AwqScalesLossFn& loss) {
  if (options.n_grid < 1) {
    return absl::InvalidArgumentError("AWQ n_grid must be positive");
  }
  if (x_mean.size() != w_mean.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat(x_mean.size(), " activation means for ", w_mean.size(),
                     " weight columns"));
  }
  const int64_t cols = static_cast<int64_t>(x_mean.size());
  AwqScaleSearchResult best;
  best.loss = std::numeric_limits<double>::infinity();
  const std::vector<float> ones(static_cast<size_t>(cols), 1.0f);
  ASSIGN_OR_RETURN(best.loss_unscaled, loss(ones));
  for (int i = 0; i < options.n_grid; ++i) {
    const double ratio = static_cast<double>(i) / options.n_grid;
    std::vector<double> s(static_cast<size_t>(cols));
    for (int64_t c = 0; c < cols; ++c) {
      s[c] = options.duo_scaling ? std::pow(x_mean[c], ratio) /
                                       (std::pow(w_mean[c], 1 - ratio) + 1e-4)
                                 : std::pow(x_mean[c], ratio);
      s[c] = std::max(s[c], 1e-4);
      if (!std::isfinite(s[c])) s[c] = 1;
    }
    const auto [lo, hi] = std::minmax_element(s.begin(), s.end());
    const double norm = std::sqrt(*lo * *hi);
    std::vector<float> scales(static_cast<size_t>(cols));
    for (int64_t c = 0; c < cols; ++c)
      scales[c] = static_cast<float>(s[c] / norm);
    ASSIGN_OR_RETURN(const double value, loss(scales));
    if (value < best.loss) {
      best.loss = value;
      best.ratio = ratio;
      best.scales = std::move(scales);
    }
  }
  // Never worse on the measured output than not scaling at all.
  if (!(best.loss <= best.loss_unscaled)) {
    best.loss = best.loss_unscaled;
    best.ratio = -1;
    best.scales = ones;
  }
  return best;
}

void ScaleInputColumns(const std::vector<float>& scales,
                       LinearWeights& linear) {
  for (int64_t r = 0; r < linear.rows; ++r) {
    float* row = linear.weight.data() + r * linear.cols;
    for (int64_t c = 0; c < linear.cols; ++c) row[c] *= scales[c];
  }
}

void DivideOutputRows(const std::vector<float>& scales, LinearWeights& linear) {
  for (int64_t r = 0; r < linear.rows; ++r) {
    float* row = linear.weight.data() + r * linear.cols;
    for (int64_t c = 0; c < linear.cols; ++c) row[c] /= scales[r];
    if (!linear.bias.empty()) linear.bias[r] /= scales[r];
  }
}

AwqClipSearch PlanAwqClip(int64_t tokens, const AwqOptions& options) {
  AwqClipSearch plan;
  plan.step = std::max<int64_t>(
      1, tokens / std::max<int64_t>(1, options.clip_sample_tokens));
  plan.n = (tokens + plan.step - 1) / plan.step;
  plan.shrinks =
      std::max(1, static_cast<int>(options.max_shrink * options.clip_grid));
  return plan;
}

absl::Status ClipAwq(const float* x, int64_t tokens, const WeightFormat& format,
                     const AwqOptions& options, LinearWeights& linear) {
  const int64_t rows = linear.rows, cols = linear.cols;
  const int bits = format.bits, group_size = format.group_size;
  RETURN_IF_ERROR(CheckAwqFormat(rows, cols, bits, group_size));
  if (tokens < 1) return absl::InvalidArgumentError("no tokens to clip on");
  const int64_t width = group_size < 0 ? cols : group_size;
  const int64_t groups = cols / width;
  const AwqClipSearch plan = PlanAwqClip(tokens, options);
  const int64_t step = plan.step, n = plan.n;
  const int shrinks = plan.shrinks;

  std::vector<float> w = linear.weight;
  std::vector<float> largest(static_cast<size_t>(rows * groups));
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t g = 0; g < groups; ++g) {
      float m = 0;
      for (int64_t k = 0; k < width; ++k)
        m = std::max(m, std::fabs(w[r * cols + g * width + k]));
      largest[r * groups + g] = m;
    }
  }
  std::vector<float> best_max = largest;
  std::vector<double> best_error(largest.size(),
                                 std::numeric_limits<double>::infinity());
  std::vector<float> xg(static_cast<size_t>(n * width));
  std::vector<float> reference(static_cast<size_t>(n * rows));
  std::vector<float> candidate(static_cast<size_t>(n * rows));
  std::vector<float> wg(static_cast<size_t>(rows * width));
  std::vector<float> clamped(static_cast<size_t>(rows * width));
  for (int64_t g = 0; g < groups; ++g) {
    for (int64_t t = 0; t < n; ++t) {
      std::copy_n(x + t * step * cols + g * width, width,
                  xg.data() + t * width);
    }
    for (int64_t r = 0; r < rows; ++r)
      std::copy_n(w.data() + r * cols + g * width, width,
                  wg.data() + r * width);
    auto group_output = [&](const std::vector<float>& weights,
                            std::vector<float>& out) {
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(n),
                  static_cast<int>(rows), static_cast<int>(width), 1.0f,
                  xg.data(), static_cast<int>(width), weights.data(),
                  static_cast<int>(width), 0.0f, out.data(),
                  static_cast<int>(rows));
    };
    group_output(wg, reference);
    for (int i = 0; i < shrinks; ++i) {
      const float keep = 1.0f - static_cast<float>(i) / options.clip_grid;
      for (int64_t r = 0; r < rows; ++r) {
        const float bound = largest[r * groups + g] * keep;
        for (int64_t k = 0; k < width; ++k) {
          clamped[r * width + k] =
              std::min(std::max(wg[r * width + k], -bound), bound);
        }
      }
      const std::vector<float> quantized =
          PseudoQuantize(clamped.data(), rows, width, bits, -1, !format.sym);
      group_output(quantized, candidate);
      for (int64_t r = 0; r < rows; ++r) {
        double error = 0;
        for (int64_t t = 0; t < n; ++t) {
          const double d = candidate[t * rows + r] - reference[t * rows + r];
          error += d * d;
        }
        error /= static_cast<double>(n);
        if (error < best_error[r * groups + g]) {
          best_error[r * groups + g] = error;
          best_max[r * groups + g] = largest[r * groups + g] * keep;
        }
      }
    }
  }
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t g = 0; g < groups; ++g) {
      const float bound = best_max[r * groups + g];
      float* values = linear.weight.data() + r * cols + g * width;
      for (int64_t k = 0; k < width; ++k)
        values[k] = std::min(std::max(values[k], -bound), bound);
    }
  }
  return absl::OkStatus();
}

}  // namespace quant
