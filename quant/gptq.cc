#include "quant/gptq.h"

#include <cblas.h>
#include <lapacke.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "format/ggml_blocks.h"
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

absl::Status CheckHessianSize(int64_t entries, int64_t cols) {
  if (entries == cols * cols) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(
      "the Hessian has ", entries, " entries, expected ", cols, "^2"));
}

absl::Status CheckSolveOptions(const GptqOptions& options) {
  if (options.block_size <= 0 || !(options.damp_percent >= 0) ||
      !(options.damp_auto_increment > 0)) {
    return absl::InvalidArgumentError(
        "block_size and damp_auto_increment must be positive, damp_percent "
        "non-negative");
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
  DequantizeRows(0, rows, w.data());
  return w;
}

void QuantizedLinear::DequantizeRows(int64_t first_row, int64_t count,
                                     float* out) const {
  if (gguf_type.has_value()) {
    const BlockDequantizeFn dequantize = GetBlockDequantizer(*gguf_type);
    const GgmlTypeTraits& traits = GetGgmlTypeTraits(*gguf_type);
    const int64_t first_block = first_row * cols / traits.block_size;
    for (int64_t i = 0; i < count * cols / traits.block_size; ++i) {
      dequantize(gguf_rows.data() + (first_block + i) * traits.type_size,
                 out + i * traits.block_size);
    }
    return;
  }
  for (int64_t r = first_row; r < first_row + count; ++r) {
    float* row = out + (r - first_row) * cols;
    for (int64_t c = 0; c < cols; ++c) {
      const int64_t g = g_idx[c];
      row[c] = quant::Dequantize(q[r * cols + c], scales[g * rows + r],
                                 zeros[g * rows + r]);
    }
  }
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

namespace {

// The grid GPTQ rounds each weight onto, column by column, and what it
// records of the solution.
class Grid {
 public:
  virtual ~Grid() = default;
  // Columns per group whose parameters are fitted on the running weights
  // when the solve reaches the group (in solve order); 0: all fixed up front.
  virtual int64_t group_width() const = 0;
  // Before the solve: the weights in their original column order, dead
  // columns zeroed.
  virtual absl::Status FitUpFront(const float* w) = 0;
  // The group at solve positions [first, first + width): value(r, k) is the
  // running weight of row r at position first + k (any k < cols - first,
  // so a grid may look past the group).
  virtual absl::Status FitGroup(
      int64_t first, int64_t width,
      const std::function<float(int64_t, int64_t)>& value) = 0;
  // The grid value for running weight x at (row, column), column in the
  // original order; the grid records the level.
  virtual float Quantize(int64_t row, int64_t column, float x) = 0;
};

struct SolveStats {
  double loss = 0;
  double damp_percent_used = 0;
};

// GPTQ's error-feedback solve: columns in order (or by decreasing Hessian
// diagonal with desc_act), each rounded onto `grid` and its error spread
// over the columns not yet quantized through the Cholesky factor of H^-1,
// in lazy batches of block_size columns.
absl::StatusOr<SolveStats> Solve(const float* w_in, int64_t rows, int64_t cols,
                                 const std::vector<double>& hessian,
                                 const GptqOptions& options, Grid& grid) {
  RETURN_IF_ERROR(CheckHessianSize(static_cast<int64_t>(hessian.size()), cols));
  RETURN_IF_ERROR(CheckSolveOptions(options));
  std::vector<float> w(w_in, w_in + rows * cols);
  std::vector<double> h = hessian;
  // Dead inputs (never active): no information, weight zeroed.
  for (int64_t j = 0; j < cols; ++j) {
    if (h[j * cols + j] == 0) {
      h[j * cols + j] = 1;
      for (int64_t r = 0; r < rows; ++r) w[r * cols + j] = 0;
    }
  }
  RETURN_IF_ERROR(grid.FitUpFront(w.data()));

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
  SolveStats stats;
  stats.damp_percent_used = options.damp_percent;
  while (!InverseCholesky(h, cols, stats.damp_percent_used * mean_diagonal,
                          hinv)) {
    stats.damp_percent_used += options.damp_auto_increment;
    if (stats.damp_percent_used > 1.0) {
      return absl::FailedPreconditionError(
          "the Hessian is not positive definite even with 100% dampening");
    }
  }
  h = {};

  const int64_t gs = grid.group_width();
  // Blocks hold whole groups when groups are smaller, so that a group's
  // parameters are always found on fully updated weights.
  int64_t block = options.block_size;
  if (gs > 0 && gs < block) block = (block / gs) * gs;
  std::vector<float> errors;       // [rows, block]: (w - q) / d of the block.
  std::vector<float> block_start;  // [rows, block]: w as the block began.
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
      if (gs > 0 && j % gs == 0) {
        // Columns past this block still lack its pending updates.
        RETURN_IF_ERROR(
            grid.FitGroup(j, std::min(gs, cols - j), [&](int64_t r, int64_t k) {
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
            }));
      }
      const float d = hinv[j * cols + j];
      for (int64_t r = 0; r < rows; ++r) {
        const float x = w[r * cols + j];
        const float e = (x - grid.Quantize(r, perm[j], x)) / d;
        stats.loss += static_cast<double>(e) * e / 2;
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
  return stats;
}

// The min-max grid of GPTQ checkpoints: scale * (q - zero) per group, with
// groups per row (-1), static (fitted up front on the original columns) or
// fitted as the solve reaches them (in solve order, hence g_idx).
class MinMaxGrid : public Grid {
 public:
  MinMaxGrid(int64_t rows, int64_t cols, const GptqOptions& options)
      : options_(options), maxq_((1 << options.bits) - 1) {
    out_.rows = rows, out_.cols = cols, out_.bits = options.bits;
    out_.group_size = options.group_size;
    out_.q.resize(static_cast<size_t>(rows * cols));
    out_.g_idx.resize(static_cast<size_t>(cols));
  }

  int64_t group_width() const override {
    return options_.group_size > 0 && !options_.static_groups
               ? options_.group_size
               : 0;
  }

  absl::Status FitUpFront(const float* w) override {
    const int64_t rows = out_.rows, cols = out_.cols, gs = options_.group_size;
    if (gs < 0) {
      fixed_.push_back(
          FindParams(rows, cols, maxq_, options_.sym, options_.mse,
                     [&](int64_t r, int64_t k) { return w[r * cols + k]; }));
    } else if (options_.static_groups) {
      for (int64_t first = 0; first < cols; first += gs) {
        fixed_.push_back(FindParams(
            rows, std::min(gs, cols - first), maxq_, options_.sym, options_.mse,
            [&](int64_t r, int64_t k) { return w[r * cols + first + k]; }));
      }
    }
    return absl::OkStatus();
  }

  absl::Status FitGroup(
      int64_t, int64_t width,
      const std::function<float(int64_t, int64_t)>& value) override {
    current_ =
        FindParams(out_.rows, width, maxq_, options_.sym, options_.mse, value);
    AppendParams(current_, out_);
    ++groups_fitted_;
    return absl::OkStatus();
  }

  float Quantize(int64_t row, int64_t column, float x) override {
    const GroupParams* params = &current_;
    int64_t group = groups_fitted_ - 1;
    if (options_.group_size < 0) {
      params = &fixed_[0], group = 0;
    } else if (options_.static_groups) {
      group = column / options_.group_size;
      params = &fixed_[group];
    }
    out_.g_idx[column] = static_cast<int32_t>(group);
    const int32_t q = Level(x, params->scale[row], params->zero[row], maxq_);
    out_.q[row * out_.cols + column] = q;
    return quant::Dequantize(q, params->scale[row], params->zero[row]);
  }

  QuantizedLinear Take() {
    for (const GroupParams& p : fixed_) AppendParams(p, out_);
    return std::move(out_);
  }

 private:
  const GptqOptions& options_;
  const int maxq_;
  QuantizedLinear out_;
  std::vector<GroupParams> fixed_;
  GroupParams current_;
  int64_t groups_fitted_ = 0;
};

// The quantizer that fits a block of `type`: the importance-weighted search
// where the type has one, llama.cpp's min-max rule for Q8_0 (which ignores
// importance, as llama.cpp does).
BlockQuantizeFn BlockFitter(GgmlType type) {
  if (type != GgmlType::kQ8_0) return GetBlockQuantizer(type, true);
  return [](const float* x, const float*, uint8_t* out) {
    BlockQ8_0 block;
    QuantizeBlockQ8_0Reference(x, &block);
    std::memcpy(out, &block, sizeof(block));
    return IsFiniteHalf(block.d);
  };
}

// A GGUF block type's own grid: each block (a row's block_size consecutive
// columns) fitted by the type's importance-weighted quantizer on the
// running weights when the solve reaches it (up front with act-order or
// static groups), then every weight rounded onto the block's grid.
class GgufGrid : public Grid {
 public:
  GgufGrid(GgmlType type, int64_t rows, int64_t cols,
           std::vector<float> importance, bool up_front)
      : type_(type),
        traits_(GetGgmlTypeTraits(type)),
        rows_(rows),
        cols_(cols),
        row_bytes_(cols / traits_.block_size * traits_.type_size),
        importance_(std::move(importance)),
        up_front_(up_front),
        range_(GetBlockLevelRange(type)),
        quantize_block_(BlockFitter(type)),
        data_(static_cast<size_t>(rows * row_bytes_)),
        step_(static_cast<size_t>(rows * cols)),
        offset_(static_cast<size_t>(rows * cols)),
        levels_(static_cast<size_t>(rows * cols)) {}

  // The k-quants' sub-blocks are refitted as the solve reaches them.
  int64_t group_width() const override {
    if (up_front_) return 0;
    return SubBlockSize(type_) > 0 ? SubBlockSize(type_) : traits_.block_size;
  }

  absl::Status FitUpFront(const float* w) override {
    if (!up_front_) return absl::OkStatus();
    for (int64_t first = 0; first < cols_; first += traits_.block_size) {
      RETURN_IF_ERROR(FitBlocks(first, [&](int64_t r, int64_t k) {
        return w[r * cols_ + first + k];
      }));
    }
    return absl::OkStatus();
  }

  // Solve order is column order here. A block is fitted whole when the
  // solve reaches it; each later k-quant sub-block gets its integer scale
  // (and min) refitted, against the block's fp16 d and dmin, on its running
  // weights (which the solve has moved since the block was fitted).
  absl::Status FitGroup(
      int64_t first, int64_t width,
      const std::function<float(int64_t, int64_t)>& value) override {
    if (first % traits_.block_size == 0) return FitBlocks(first, value);
    const int64_t offset = first % traits_.block_size;
    std::vector<float> x(static_cast<size_t>(width));
    for (int64_t r = 0; r < rows_; ++r) {
      for (int64_t k = 0; k < width; ++k) x[k] = value(r, k);
      RefitSubBlock(type_, BlockBytes(r, first),
                    static_cast<int>(offset / width), x.data(),
                    importance_.data() + first);
      ReadGrid(r, first, width);
    }
    return absl::OkStatus();
  }

  float Quantize(int64_t row, int64_t column, float x) override {
    const size_t i = static_cast<size_t>(row * cols_ + column);
    const float step = step_[i], offset = offset_[i];
    // A zero step (an unused sub-block scale) holds one value: level 0
    // where the range has it, else the range's bottom.
    int level = std::max(range_.min, 0);
    if (step != 0) {
      const float q = std::nearbyint((x - offset) / step);
      level =
          static_cast<int>(std::min(std::max(q, static_cast<float>(range_.min)),
                                    static_cast<float>(range_.max)));
    }
    levels_[i] = level;
    return step * static_cast<float>(level) + offset;
  }

  int64_t block_size() const { return traits_.block_size; }
  const BlockLevelRange& range() const { return range_; }
  const std::vector<float>& steps() const { return step_; }
  const std::vector<float>& offsets() const { return offset_; }
  void SetLevels(const std::vector<int>& levels) { levels_ = levels; }

  QuantizedLinear Take() {
    const int64_t block = traits_.block_size;
    for (int64_t r = 0; r < rows_; ++r) {
      for (int64_t first = 0; first < cols_; first += block) {
        SetBlockLevels(type_, levels_.data() + r * cols_ + first,
                       BlockBytes(r, first));
      }
    }
    QuantizedLinear out;
    out.rows = rows_, out.cols = cols_;
    out.bits = 0;  // Bits per level: 2 to 8.
    while ((1 << out.bits) < range_.max - range_.min + 1) ++out.bits;
    out.group_size = static_cast<int>(block);
    out.gguf_type = type_;
    out.gguf_rows = std::move(data_);
    return out;
  }

 private:
  // The block of `row` that holds column `column`.
  uint8_t* BlockBytes(int64_t row, int64_t column) {
    return data_.data() + row * row_bytes_ +
           column / traits_.block_size * traits_.type_size;
  }

  // Each weight's grid in columns [first, first + width) of `row`, from its
  // block as it now stands.
  void ReadGrid(int64_t row, int64_t first, int64_t width) {
    BlockGrid grid;
    GetBlockGrid(type_, BlockBytes(row, first), &grid);
    const int64_t offset = first % traits_.block_size;
    std::copy_n(grid.step + offset, width, step_.data() + row * cols_ + first);
    std::copy_n(grid.offset + offset, width,
                offset_.data() + row * cols_ + first);
  }

  absl::Status FitBlocks(int64_t first,
                         const std::function<float(int64_t, int64_t)>& value) {
    const int64_t block = traits_.block_size;
    std::vector<float> x(static_cast<size_t>(block));
    for (int64_t r = 0; r < rows_; ++r) {
      for (int64_t k = 0; k < block; ++k) x[k] = value(r, k);
      uint8_t* bytes = BlockBytes(r, first);
      if (!quantize_block_(x.data(), importance_.data() + first, bytes)) {
        RETURN_IF_ERROR(CheckRepresentable(type_, x.data(), block, r,
                                           importance_.data() + first));
        return absl::InternalError(absl::StrCat(traits_.name, " block at row ",
                                                r, ", column ", first,
                                                " failed to quantize"));
      }
      ReadGrid(r, first, block);
    }
    return absl::OkStatus();
  }

  const GgmlType type_;
  const GgmlTypeTraits& traits_;
  const int64_t rows_, cols_, row_bytes_;
  const std::vector<float> importance_;
  const bool up_front_;
  const BlockLevelRange range_;
  const BlockQuantizeFn quantize_block_;
  std::vector<uint8_t> data_;         // The rows in type_, levels written last.
  std::vector<float> step_, offset_;  // [rows, cols]: each weight's grid.
  std::vector<int> levels_;           // [rows, cols].
};

}  // namespace

absl::Status CheckGptqArguments(int64_t rows, int64_t cols,
                                int64_t hessian_entries,
                                const GptqOptions& options) {
  RETURN_IF_ERROR(CheckShape(rows, cols, options.bits, options.group_size));
  RETURN_IF_ERROR(CheckHessianSize(hessian_entries, cols));
  return CheckSolveOptions(options);
}

absl::StatusOr<GptqResult> GptqQuantize(const float* w, int64_t rows,
                                        int64_t cols,
                                        const std::vector<double>& hessian,
                                        const GptqOptions& options) {
  RETURN_IF_ERROR(CheckShape(rows, cols, options.bits, options.group_size));
  MinMaxGrid grid(rows, cols, options);
  ASSIGN_OR_RETURN(const SolveStats stats,
                   Solve(w, rows, cols, hessian, options, grid));
  return GptqResult{grid.Take(), stats.loss, stats.damp_percent_used};
}

class GgufSolveGrid::Impl {
 public:
  Impl(GgmlType type, int64_t rows, int64_t cols, std::vector<float> importance,
       bool up_front)
      : grid(type, rows, cols, std::move(importance), up_front) {}
  GgufGrid grid;
};

GgufSolveGrid::GgufSolveGrid(std::unique_ptr<Impl> impl)
    : impl_(std::move(impl)) {}
GgufSolveGrid::~GgufSolveGrid() = default;

absl::Status GgufSolveGrid::CheckTypeAndShape(GgmlType type, int64_t rows,
                                              int64_t cols) {
  if (GetBlockLevelRange(type).max < GetBlockLevelRange(type).min) {
    return absl::InvalidArgumentError(absl::StrCat(
        "GPTQ cannot solve on the grid of GGUF type ", GgmlTypeName(type)));
  }
  // Shape: 8 bits and one group per row pass for any type; then the
  // columns must make whole blocks.
  RETURN_IF_ERROR(CheckShape(rows, cols, 8, -1));
  return GgmlRowBytes(type, cols).status();
}

absl::StatusOr<std::unique_ptr<GgufSolveGrid>> GgufSolveGrid::Create(
    GgmlType type, int64_t rows, int64_t cols, std::vector<float> importance,
    const GptqOptions& options) {
  RETURN_IF_ERROR(CheckTypeAndShape(type, rows, cols));
  if (static_cast<int64_t>(importance.size()) != cols) {
    return absl::InvalidArgumentError(
        absl::StrCat("GGUF grid: ", importance.size(), " importances for ",
                     cols, " columns"));
  }
  RETURN_IF_ERROR(CheckImportance(importance.data(), cols));
  return std::unique_ptr<GgufSolveGrid>(
      new GgufSolveGrid(std::make_unique<Impl>(
          type, rows, cols, std::move(importance),
          /*up_front=*/options.desc_act || options.static_groups)));
}

int64_t GgufSolveGrid::group_width() const { return impl_->grid.group_width(); }
int64_t GgufSolveGrid::block_size() const { return impl_->grid.block_size(); }
int GgufSolveGrid::level_min() const { return impl_->grid.range().min; }
int GgufSolveGrid::level_max() const { return impl_->grid.range().max; }
absl::Status GgufSolveGrid::FitUpFront(const float* w) {
  return impl_->grid.FitUpFront(w);
}
absl::Status GgufSolveGrid::FitGroup(
    int64_t first, int64_t width,
    const std::function<float(int64_t, int64_t)>& value) {
  return impl_->grid.FitGroup(first, width, value);
}
const float* GgufSolveGrid::steps() const { return impl_->grid.steps().data(); }
const float* GgufSolveGrid::offsets() const {
  return impl_->grid.offsets().data();
}
QuantizedLinear GgufSolveGrid::Take(const std::vector<int>& levels) {
  impl_->grid.SetLevels(levels);
  return impl_->grid.Take();
}

absl::StatusOr<GptqResult> GptqQuantizeGguf(const float* w, int64_t rows,
                                            int64_t cols,
                                            const std::vector<double>& hessian,
                                            GgmlType type,
                                            const GptqOptions& options) {
  RETURN_IF_ERROR(GgufSolveGrid::CheckTypeAndShape(type, rows, cols));
  RETURN_IF_ERROR(CheckHessianSize(static_cast<int64_t>(hessian.size()), cols));
  std::vector<float> importance(static_cast<size_t>(cols));
  for (int64_t j = 0; j < cols; ++j) {
    importance[j] = static_cast<float>(hessian[j * cols + j]);
  }
  ASSIGN_OR_RETURN(
      std::unique_ptr<GgufSolveGrid> solve_grid,
      GgufSolveGrid::Create(type, rows, cols, std::move(importance), options));
  GgufGrid& grid = solve_grid->impl_->grid;
  ASSIGN_OR_RETURN(const SolveStats stats,
                   Solve(w, rows, cols, hessian, options, grid));
  return GptqResult{grid.Take(), stats.loss, stats.damp_percent_used};
}

}  // namespace quant
