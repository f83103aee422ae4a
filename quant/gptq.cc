#include "quant/gptq.h"

#include <cblas.h>
#include <lapacke.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "format/half.h"

namespace quant {
namespace {

// Per-row quantization grid of one group: x ~= scale * (q - zero).
struct GroupParams {
  std::vector<float> scale;
  std::vector<int32_t> zero;
};

int32_t Level(float x, float scale, int32_t zero, int maxq);
float Dequantize(int32_t q, float scale, int32_t zero);

// Scale and zero of the range [lo, hi] (which includes 0).
void RangeParams(float lo, float hi, int maxq, bool sym, float& scale,
                 int32_t& zero) {
  if (sym) {
    hi = std::max(-lo, hi);
    if (lo < 0) lo = -hi;
  }
  if (lo == 0 && hi == 0) lo = -1, hi = 1;
  // Scales are stored as fp16 in every format we write: quantize with the
  // stored value so that the model evaluated is the model exported.
  scale = RoundScaleToHalf((hi - lo) / static_cast<float>(maxq));
  // Zero point 0 (a group with no negative value) has no encoding in the
  // GPTQ v1 layout, which stores zero - 1: start the grid at -scale.
  zero = sym ? (maxq + 1) / 2
             : std::max<int32_t>(
                   1, static_cast<int32_t>(std::nearbyint(-lo / scale)));
}

// Min-max parameters from `columns` values per row, read through
// `value(row, k)` (AutoGPTQ's Quantizer.find_params for weights: the range
// always includes 0; symmetric grids center it at (maxq + 1) / 2). With
// `mse`, the range shrinks to p [lo, hi] for p = 1, 0.99, ..., 0.2 and the p
// of least sum |q(x) - x|^2.4 is kept (AutoGPTQ's mse option).
template <typename Value>
GroupParams FindParams(int64_t rows, int64_t columns, int maxq, bool sym,
                       bool mse, Value value) {
  constexpr int kGrid = 100;
  constexpr double kMaxShrink = 0.8, kNorm = 2.4;
  GroupParams p;
  p.scale.resize(static_cast<size_t>(rows));
  p.zero.resize(static_cast<size_t>(rows));
  for (int64_t r = 0; r < rows; ++r) {
    float lo = 0, hi = 0;
    for (int64_t k = 0; k < columns; ++k) {
      lo = std::min(lo, value(r, k));
      hi = std::max(hi, value(r, k));
    }
    RangeParams(lo, hi, maxq, sym, p.scale[r], p.zero[r]);
    if (!mse) continue;
    double best = std::numeric_limits<double>::infinity();
    for (int i = 0; i < static_cast<int>(kMaxShrink * kGrid); ++i) {
      const float shrink = 1.0f - static_cast<float>(i) / kGrid;
      float scale;
      int32_t zero;
      RangeParams(shrink * lo, shrink * hi, maxq, sym, scale, zero);
      double error = 0;
      for (int64_t k = 0; k < columns; ++k) {
        const float x = value(r, k);
        error += std::pow(
            std::fabs(Dequantize(Level(x, scale, zero, maxq), scale, zero) - x),
            kNorm);
      }
      if (error < best) {
        best = error;
        p.scale[r] = scale;
        p.zero[r] = zero;
      }
    }
  }
  return p;
}

int32_t Level(float x, float scale, int32_t zero, int maxq) {
  const float q = std::nearbyint(x / scale) + static_cast<float>(zero);
  return static_cast<int32_t>(
      std::min(std::max(q, 0.0f), static_cast<float>(maxq)));
}

float Dequantize(int32_t q, float scale, int32_t zero) {
  return scale * static_cast<float>(q - zero);
}

absl::Status CheckShape(int64_t rows, int64_t cols, int bits, int group_size) {
  if (rows <= 0 || cols <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("weight shape [", rows, ", ", cols, "] is empty"));
  }
  if (bits < 2 || bits > 8) {
    return absl::InvalidArgumentError(
        absl::StrCat("bits must be 2 to 8, not ", bits));
  }
  if (group_size == 0 || group_size < -1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "group_size must be -1 (per row) or positive, not ", group_size));
  }
  return absl::OkStatus();
}

void AppendParams(const GroupParams& p, QuantizedLinear& out) {
  out.scales.insert(out.scales.end(), p.scale.begin(), p.scale.end());
  out.zeros.insert(out.zeros.end(), p.zero.begin(), p.zero.end());
}

// Upper Cholesky factor U of (H + damp I)^-1 (H^-1 = U^T U), as float.
// Returns false when H + damp I is not positive definite.
bool InverseCholesky(std::vector<double> h, int64_t n, double damp,
                     std::vector<float>& u) {
  for (int64_t j = 0; j < n; ++j) h[j * n + j] += damp;
  const int nn = static_cast<int>(n);
  if (LAPACKE_dpotrf(LAPACK_ROW_MAJOR, 'L', nn, h.data(), nn) != 0) {
    return false;
  }
  if (LAPACKE_dpotri(LAPACK_ROW_MAJOR, 'L', nn, h.data(), nn) != 0) {
    return false;
  }
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = i + 1; j < n; ++j) h[i * n + j] = h[j * n + i];
  }
  if (LAPACKE_dpotrf(LAPACK_ROW_MAJOR, 'U', nn, h.data(), nn) != 0) {
    return false;
  }
  u.assign(static_cast<size_t>(n * n), 0.0f);
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = i; j < n; ++j)
      u[i * n + j] = static_cast<float>(h[i * n + j]);
  }
  return true;
}

}  // namespace

float RoundScaleToHalf(float scale) {
  const float rounded = HalfToFloat(FloatToHalf(scale));
  // The smallest positive fp16 (2^-24) keeps tiny groups quantizable.
  return rounded > 0 ? rounded : HalfToFloat(1);
}

std::vector<float> QuantizedLinear::Dequantize() const {
  std::vector<float> w(static_cast<size_t>(rows * cols));
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) {
      const int64_t g = g_idx[c];
      w[r * cols + c] = quant::Dequantize(q[r * cols + c], scales[g * rows + r],
                                          zeros[g * rows + r]);
    }
  }
  return w;
}

absl::StatusOr<QuantizedLinear> RtnQuantize(const float* w, int64_t rows,
                                            int64_t cols, int bits,
                                            int group_size, bool sym,
                                            bool mse) {
  if (absl::Status s = CheckShape(rows, cols, bits, group_size); !s.ok()) {
    return s;
  }
  const int maxq = (1 << bits) - 1;
  const int64_t width = group_size < 0 ? cols : group_size;
  QuantizedLinear out;
  out.rows = rows, out.cols = cols, out.bits = bits,
  out.group_size = group_size;
  out.q.resize(static_cast<size_t>(rows * cols));
  out.g_idx.resize(static_cast<size_t>(cols));
  for (int64_t first = 0, g = 0; first < cols; first += width, ++g) {
    const int64_t n = std::min(width, cols - first);
    const GroupParams p = FindParams(
        rows, n, maxq, sym, mse,
        [&](int64_t r, int64_t k) { return w[r * cols + first + k]; });
    AppendParams(p, out);
    for (int64_t c = first; c < first + n; ++c) {
      out.g_idx[c] = static_cast<int32_t>(g);
      for (int64_t r = 0; r < rows; ++r) {
        out.q[r * cols + c] =
            Level(w[r * cols + c], p.scale[r], p.zero[r], maxq);
      }
    }
  }
  return out;
}

absl::StatusOr<GptqResult> GptqQuantize(const float* w_in, int64_t rows,
                                        int64_t cols,
                                        const std::vector<double>& hessian,
                                        const GptqOptions& options) {
  if (absl::Status s = CheckShape(rows, cols, options.bits, options.group_size);
      !s.ok()) {
    return s;
  }
  if (static_cast<int64_t>(hessian.size()) != cols * cols) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the Hessian has ", hessian.size(), " entries, expected ", cols, "^2"));
  }
  if (options.block_size <= 0 || !(options.damp_percent >= 0) ||
      !(options.damp_auto_increment > 0)) {
    return absl::InvalidArgumentError(
        "block_size and damp_auto_increment must be positive, damp_percent "
        "non-negative");
  }
  const int maxq = (1 << options.bits) - 1;
  const int64_t gs = options.group_size;
  std::vector<float> w(w_in, w_in + rows * cols);
  std::vector<double> h = hessian;
  // Dead inputs (never active): no information, weight zeroed.
  for (int64_t j = 0; j < cols; ++j) {
    if (h[j * cols + j] == 0) {
      h[j * cols + j] = 1;
      for (int64_t r = 0; r < rows; ++r) w[r * cols + j] = 0;
    }
  }
  QuantizedLinear out;
  out.rows = rows, out.cols = cols, out.bits = options.bits;
  out.group_size = options.group_size;
  out.q.resize(static_cast<size_t>(rows * cols));
  out.g_idx.resize(static_cast<size_t>(cols));

  // Group parameters fixed up front: per row (-1), or static groups.
  std::vector<GroupParams> fixed;
  if (gs < 0) {
    fixed.push_back(
        FindParams(rows, cols, maxq, options.sym, options.mse,
                   [&](int64_t r, int64_t k) { return w[r * cols + k]; }));
  } else if (options.static_groups) {
    for (int64_t first = 0; first < cols; first += gs) {
      fixed.push_back(FindParams(
          rows, std::min(gs, cols - first), maxq, options.sym, options.mse,
          [&](int64_t r, int64_t k) { return w[r * cols + first + k]; }));
    }
  }

  // Act-order: columns by decreasing Hessian diagonal (stable).
  std::vector<int64_t> perm(static_cast<size_t>(cols));
  std::iota(perm.begin(), perm.end(), 0);
  if (options.desc_act) {
    std::stable_sort(perm.begin(), perm.end(), [&](int64_t a, int64_t b) {
      return h[a * cols + a] > h[b * cols + b];
    });
    std::vector<float> pw(w.size());
    std::vector<double> ph(h.size());
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t j = 0; j < cols; ++j)
        pw[r * cols + j] = w[r * cols + perm[j]];
    }
    for (int64_t i = 0; i < cols; ++i) {
      for (int64_t j = 0; j < cols; ++j) {
        ph[i * cols + j] = h[perm[i] * cols + perm[j]];
      }
    }
    w.swap(pw);
    h.swap(ph);
  }

  double mean_diagonal = 0;
  for (int64_t j = 0; j < cols; ++j) mean_diagonal += h[j * cols + j];
  mean_diagonal /= static_cast<double>(cols);
  std::vector<float> hinv;
  double damp_percent = options.damp_percent;
  while (!InverseCholesky(h, cols, damp_percent * mean_diagonal, hinv)) {
    damp_percent += options.damp_auto_increment;
    if (damp_percent > 1.0) {
      return absl::FailedPreconditionError(
          "the Hessian is not positive definite even with 100% dampening");
    }
  }
  h = {};

  GptqResult result;
  result.damp_percent_used = damp_percent;
  // Blocks hold whole groups when groups are smaller, so that a group's
  // parameters are always found on fully updated weights.
  int64_t block = options.block_size;
  if (gs > 0 && gs < block) block = (block / gs) * gs;
  std::vector<float> errors;  // [rows, block]: (w - q) / d of the block.
  std::vector<int32_t> permuted_q(static_cast<size_t>(rows * cols));
  std::vector<int32_t> permuted_group(static_cast<size_t>(cols));
  GroupParams current;
  std::vector<float> block_start;  // [rows, block]: w as the block began.
  int64_t groups_found = 0;
  double loss = 0;
  for (int64_t i1 = 0; i1 < cols; i1 += block) {
    const int64_t i2 = std::min(i1 + block, cols), count = i2 - i1;
    errors.assign(static_cast<size_t>(rows * count), 0.0f);
    if (options.group_params_at_block_start) {
      block_start.resize(static_cast<size_t>(rows * count));
      for (int64_t r = 0; r < rows; ++r) {
        std::copy_n(w.data() + r * cols + i1, count,
                    block_start.data() + r * count);
      }
    }
    for (int64_t j = i1; j < i2; ++j) {
      const GroupParams* params;
      if (gs < 0) {
        params = &fixed[0];
        permuted_group[j] = 0;
      } else if (options.static_groups) {
        params = &fixed[perm[j] / gs];
        permuted_group[j] = static_cast<int32_t>(perm[j] / gs);
      } else {
        if (j % gs == 0) {
          // Columns past this block still lack its pending updates.
          const int64_t width = std::min(gs, cols - j);
          current = FindParams(
              rows, width, maxq, options.sym, options.mse,
              [&](int64_t r, int64_t k) {
                const int64_t c = j + k;
                if (options.group_params_at_block_start) {
                  return c < i2 ? block_start[r * count + c - i1]
                                : w[r * cols + c];
                }
                float v = w[r * cols + c];
                if (c >= i2) {
                  for (int64_t m = 0; m < j - i1; ++m) {
                    v -= errors[r * count + m] * hinv[(i1 + m) * cols + c];
                  }
                }
                return v;
              });
          AppendParams(current, out);
          ++groups_found;
        }
        params = &current;
        permuted_group[j] = static_cast<int32_t>(groups_found - 1);
      }
      const float d = hinv[j * cols + j];
      for (int64_t r = 0; r < rows; ++r) {
        const float x = w[r * cols + j];
        const int32_t q = Level(x, params->scale[r], params->zero[r], maxq);
        permuted_q[r * cols + j] = q;
        const float e =
            (x - Dequantize(q, params->scale[r], params->zero[r])) / d;
        loss += static_cast<double>(e) * e / 2;
        errors[r * count + (j - i1)] = e;
        float* row = w.data() + r * cols;
        const float* hrow = hinv.data() + j * cols;
        for (int64_t c = j + 1; c < i2; ++c) row[c] -= e * hrow[c];
      }
    }
    if (i2 < cols) {
      // W[:, i2:] -= E [rows, count] x Hinv[i1:i2, i2:].
      cblas_sgemm(
          CblasRowMajor, CblasNoTrans, CblasNoTrans, static_cast<int>(rows),
          static_cast<int>(cols - i2), static_cast<int>(count), -1.0f,
          errors.data(), static_cast<int>(count), hinv.data() + i1 * cols + i2,
          static_cast<int>(cols), 1.0f, w.data() + i2, static_cast<int>(cols));
    }
  }
  if (gs < 0) AppendParams(fixed[0], out);
  if (gs > 0 && options.static_groups) {
    for (const GroupParams& p : fixed) AppendParams(p, out);
  }
  for (int64_t j = 0; j < cols; ++j) {
    out.g_idx[perm[j]] = permuted_group[j];
    for (int64_t r = 0; r < rows; ++r) {
      out.q[r * cols + perm[j]] = permuted_q[r * cols + j];
    }
  }
  result.quantized = std::move(out);
  result.loss = loss;
  return result;
}

}  // namespace quant
