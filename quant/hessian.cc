#include "quant/hessian.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/parallel.h"

namespace quant {
namespace {

constexpr int64_t kTile = 64;

// body(first, end) over tiles of kTile rows of a [columns, columns] matrix,
// on every core; each row is in exactly one tile.
void ForRowTiles(int64_t columns,
                 const std::function<void(int64_t, int64_t)>& body) {
  const int64_t tiles = (columns + kTile - 1) / kTile;
  ParallelForEach(static_cast<uint64_t>(tiles), HardwareThreads(),
                  [&](uint64_t tile) {
                    const int64_t first = static_cast<int64_t>(tile) * kTile;
                    body(first, std::min(columns, first + kTile));
                  });
}

}  // namespace

HessianAccumulator::HessianAccumulator(int64_t columns)
    : columns_(columns > 0 ? columns : 0),
      sum_xxt_(static_cast<size_t>(columns_ * columns_), 0.0),
      sum_abs_(static_cast<size_t>(columns_), 0.0) {}

void HessianAccumulator::Add(const float* x, int64_t n) {
  if (n <= 0 || columns_ == 0) return;
  // The batch's X^T X (lower triangle) in float32, then into the totals.
  std::vector<float> batch(static_cast<size_t>(columns_ * columns_), 0.0f);
  cblas_ssyrk(CblasRowMajor, CblasLower, CblasTrans, static_cast<int>(columns_),
              static_cast<int>(n), 1.0f, x, static_cast<int>(columns_), 0.0f,
              batch.data(), static_cast<int>(columns_));
  for (int64_t i = 0; i < columns_; ++i) {
    for (int64_t j = 0; j <= i; ++j)
      sum_xxt_[i * columns_ + j] += batch[i * columns_ + j];
  }
  for (int64_t t = 0; t < n; ++t) {
    for (int64_t c = 0; c < columns_; ++c)
      sum_abs_[c] += std::fabs(x[t * columns_ + c]);
  }
  samples_ += n;
}

absl::Status HessianAccumulator::Merge(const HessianAccumulator& other) {
  if (other.columns_ != columns_) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot merge statistics of ", other.columns_,
                     " columns into ", columns_));
  }
  // The lower triangle (the only one kept), element by element, so any
  // split adds the same bits; a 70B down_proj's sums are 6.6 GB, which one
  // core takes a second over.
  ForRowTiles(columns_, [&](int64_t first, int64_t end) {
    for (int64_t i = first; i < end; ++i) {
      double* to = sum_xxt_.data() + i * columns_;
      const double* from = other.sum_xxt_.data() + i * columns_;
      for (int64_t j = 0; j <= i; ++j) to[j] += from[j];
    }
  });
  for (size_t c = 0; c < sum_abs_.size(); ++c) sum_abs_[c] += other.sum_abs_[c];
  samples_ += other.samples_;
  return absl::OkStatus();
}

std::vector<double> HessianAccumulator::Hessian() const {
  std::vector<double> h(sum_xxt_.size(), 0.0);
  if (samples_ == 0) return h;
  const double scale = 2.0 / static_cast<double>(samples_);
  // Tile by tile, so that the mirrored writes stay in cache.
  ForRowTiles(columns_, [&](int64_t first, int64_t end) {
    for (int64_t j0 = 0; j0 < end; j0 += kTile) {
      for (int64_t i = first; i < end; ++i) {
        const int64_t j_end = std::min(i + 1, j0 + kTile);
        for (int64_t j = j0; j < j_end; ++j) {
          h[i * columns_ + j] = h[j * columns_ + i] =
              scale * sum_xxt_[i * columns_ + j];
        }
      }
    }
  });
  return h;
}

std::vector<double> HessianAccumulator::MeanAbs() const {
  std::vector<double> mean(sum_abs_.size(), 0.0);
  if (samples_ == 0) return mean;
  for (size_t c = 0; c < mean.size(); ++c) mean[c] = sum_abs_[c] / samples_;
  return mean;
}

absl::Status HessianAccumulator::AddPackedSums(int64_t samples,
                                               const void* lower,
                                               const void* sum_abs) {
  if (samples < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("statistics of ", samples, " samples"));
  }
  const auto* bytes = static_cast<const unsigned char*>(lower);
  for (int64_t i = 0; i < columns_; ++i) {
    double* row = sum_xxt_.data() + i * columns_;
    for (int64_t j = 0; j <= i; ++j, bytes += sizeof(double)) {
      double value;
      std::memcpy(&value, bytes, sizeof(double));
      row[j] += value;
    }
  }
  const auto* abs_bytes = static_cast<const unsigned char*>(sum_abs);
  for (int64_t c = 0; c < columns_; ++c) {
    double value;
    std::memcpy(&value, abs_bytes + c * sizeof(double), sizeof(double));
    sum_abs_[c] += value;
  }
  samples_ += samples;
  return absl::OkStatus();
}

absl::StatusOr<HessianAccumulator> HessianAccumulator::FromSums(
    int64_t samples, std::vector<double> sum_xxt, std::vector<double> sum_abs) {
  const int64_t columns = static_cast<int64_t>(sum_abs.size());
  if (samples < 0 || columns == 0 ||
      sum_xxt.size() != static_cast<size_t>(columns * columns)) {
    return absl::InvalidArgumentError(
        absl::StrCat("statistics of ", samples, " samples with ",
                     sum_xxt.size(), " products for ", columns, " columns"));
  }
  HessianAccumulator made(0);
  made.columns_ = columns;
  made.samples_ = samples;
  made.sum_xxt_ = std::move(sum_xxt);
  made.sum_abs_ = std::move(sum_abs);
  return made;
}

}  // namespace quant
