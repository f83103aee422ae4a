#include "format/scale_fit.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace quant {
namespace {

// Candidate scales map the group's range onto q_max + r levels for
// r = kFirstR, kFirstR + kStepR, ..., kFirstR + kSteps * kStepR: r > 0
// clips the far end, r < 0 leaves part of the grid unused. Even steps pin
// the low end of the range to the lowest level, odd steps the high end to
// the highest, so that clipping is tried at both ends. (On exhaustively
// solved 8-value 2-bit groups this lands within 0.03% of the optimum on
// average; pinning one end only, 1.3%.)
constexpr float kFirstR = -1.0f;
constexpr float kStepR = 0.05f;
constexpr int kSteps = 40;
// Then a few whole-level r < -1: a group that already lies on a grid but
// does not reach its top level (values dequantized from this format) is fitted
// exactly again, so requantizing is stable.
constexpr int kExtraWholeLevels[] = {-2, -3, -4};
// Rounding/re-fitting rounds after the grid; in practice it settles in one
// or two.
constexpr int kRefineRounds = 4;
// Largest group the fits take (k-quants use 16 and 32).
constexpr int kMaxGroup = 256;

// All-zero weights carry no information: such groups are fitted unweighted.
bool HasPositiveWeight(const float* w, int n) {
  bool any = false;
  for (int i = 0; w != nullptr && i < n; ++i) any |= w[i] > 0;
  return any;
}

// Weighted sums of one rounding.
struct LevelSums {
  double sq = 0;   // sum w q
  double sqq = 0;  // sum w q^2
  double sqx = 0;  // sum w q x
};

template <typename Level>
LevelSums SumLevels(const float* x, const float* w, int n, const Level* q) {
  float sq = 0, sqq = 0, sqx = 0;
  for (int i = 0; i < n; ++i) {
    const float wi = w != nullptr ? w[i] : 1.0f;
    const float qi = static_cast<float>(q[i]);
    sq += wi * qi;
    sqq += wi * qi * qi;
    sqx += wi * qi * x[i];
  }
  return {sq, sqq, sqx};
}

// The least-squares (scale, offset) for levels with sums `s`, and its gain:
// sum w x^2 - error. False when no positive scale fits.
bool SolveAffine(const LevelSums& s, double sw, double sx,
                 bool nonpositive_offset, double* scale, double* offset,
                 double* gain) {
  const double det = sw * s.sqq - s.sq * s.sq;
  double a = 0, b = 0;
  bool unconstrained = false;
  if (det > 0) {
    a = (sw * s.sqx - s.sq * sx) / det;
    b = (s.sqq * sx - s.sq * s.sqx) / det;
    unconstrained = !(nonpositive_offset && b > 0);
  }
  if (!unconstrained) {
    if (s.sqq <= 0) return false;
    a = s.sqx / s.sqq;
    b = 0;
  }
  if (!(a > 0)) return false;
  *scale = a;
  *offset = b;
  *gain = 2 * a * s.sqx + 2 * b * sx - a * a * s.sqq - 2 * a * b * s.sq -
          b * b * sw;
  return true;
}

}  // namespace

int RoundClamp(float v, int lo, int hi) {
  // Clamp first (NaN goes to lo), then round with the 1.5 * 2^23 trick, which
  // rounds to nearest even for |v| < 2^22 and vectorizes.
  float c = v > static_cast<float>(hi) ? static_cast<float>(hi) : v;
  c = c >= static_cast<float>(lo) ? c : static_cast<float>(lo);
  const float magic = 12582912.0f;
  return static_cast<int>((c + magic) - magic);
}

AffineFit FitAffine(const float* x, const float* w, int n, int q_max,
                    bool nonpositive_offset, uint8_t* q) {
  AffineFit fit;
  if (n <= 0 || n > kMaxGroup) return fit;
  float x_min = x[0], x_max = x[0];
  for (int i = 1; i < n; ++i) {
    x_min = x[i] < x_min ? x[i] : x_min;
    x_max = x[i] > x_max ? x[i] : x_max;
  }
  if (nonpositive_offset && x_min > 0) x_min = 0;
  if (!HasPositiveWeight(w, n)) w = nullptr;
  double sw = 0, sx = 0;
  for (int i = 0; i < n; ++i) {
    const float wi = w != nullptr ? w[i] : 1.0f;
    sw += wi;
    sx += wi * x[i];
  }
  uint8_t best[kMaxGroup] = {};
  uint8_t trial[kMaxGroup];
  fit.offset = x_min;
  const float range = x_max - x_min;
  const float inverse_range = range > 0 ? 1.0f / range : 0.0f;
  if (!(range > 0) || !std::isfinite(inverse_range)) {
    // All values (and 0, for a non-positive offset) equal: q = 0.
    if (q != nullptr) std::fill(q, q + n, 0);
    return fit;
  }
  double best_gain = -std::numeric_limits<double>::infinity();
  double best_scale = 0, best_offset = x_min;
  // Levels from rounding the range onto `levels` steps, the low end pinned
  // to level 0 (or the high end to q_max).
  auto try_grid = [&](float levels, bool pin_high) {
    const float inverse_scale = levels * inverse_range;
    if (!pin_high) {
      for (int i = 0; i < n; ++i) {
        trial[i] = static_cast<uint8_t>(
            RoundClamp(inverse_scale * (x[i] - x_min), 0, q_max));
      }
    } else {
      for (int i = 0; i < n; ++i) {
        trial[i] = static_cast<uint8_t>(
            q_max - RoundClamp(inverse_scale * (x_max - x[i]), 0, q_max));
      }
    }
    double scale, offset, gain;
    if (SolveAffine(SumLevels(x, w, n, trial), sw, sx, nonpositive_offset,
                    &scale, &offset, &gain) &&
        gain > best_gain) {
      best_gain = gain;
      best_scale = scale;
      best_offset = offset;
      std::copy(trial, trial + n, best);
    }
  };
  for (int step = 0; step <= kSteps; ++step) {
    try_grid(static_cast<float>(q_max) + kFirstR + kStepR * step, step % 2);
  }
  for (const int r : kExtraWholeLevels) {
    if (q_max + r >= 1) try_grid(static_cast<float>(q_max + r), false);
  }
  for (int round = 0; round < kRefineRounds && best_scale > 0; ++round) {
    const float inverse_scale = static_cast<float>(1.0 / best_scale);
    const float offset = static_cast<float>(best_offset);
    if (!std::isfinite(inverse_scale)) break;
    bool changed = false;
    for (int i = 0; i < n; ++i) {
      trial[i] = static_cast<uint8_t>(
          RoundClamp(inverse_scale * (x[i] - offset), 0, q_max));
      changed |= trial[i] != best[i];
    }
    if (!changed) break;
    double scale, offset_fit, gain;
    if (!SolveAffine(SumLevels(x, w, n, trial), sw, sx, nonpositive_offset,
                     &scale, &offset_fit, &gain) ||
        !(gain > best_gain)) {
      break;
    }
    best_gain = gain;
    best_scale = scale;
    best_offset = offset_fit;
    std::copy(trial, trial + n, best);
  }
  if (best_scale > 0) {
    fit.scale = static_cast<float>(best_scale);
    fit.offset = static_cast<float>(best_offset);
  }
  if (q != nullptr) std::copy(best, best + n, q);
  return fit;
}

float FitSymmetric(const float* x, const float* w, int n, int q_neg,
                   int8_t* q) {
  if (n <= 0 || n > kMaxGroup) return 0.0f;
  float amax = 0, extreme = 0;  // The first value of largest magnitude.
  for (int i = 0; i < n; ++i) {
    const float a = std::fabs(x[i]);
    if (a > amax) amax = a, extreme = x[i];
  }
  if (!HasPositiveWeight(w, n)) w = nullptr;
  int8_t best[kMaxGroup] = {};
  int8_t trial[kMaxGroup];
  double best_gain = 0, best_scale = 0;
  const float inverse_extreme = amax > 0 ? -1.0f / extreme : 0.0f;
  if (amax > 0 && std::isfinite(inverse_extreme)) {
    const int lo = -q_neg, hi = q_neg - 1;
    auto try_levels = [&]() {
      const LevelSums s = SumLevels(x, w, n, trial);
      if (!(s.sqq > 0)) return false;
      const double gain = s.sqx * s.sqx / s.sqq;
      if (!(gain > best_gain)) return false;
      best_gain = gain;
      best_scale = s.sqx / s.sqq;
      std::copy(trial, trial + n, best);
      return true;
    };
    // Levels from mapping the extreme value to -levels.
    auto try_grid = [&](float levels) {
      const float inverse_scale = levels * inverse_extreme;
      for (int i = 0; i < n; ++i) {
        trial[i] =
            static_cast<int8_t>(RoundClamp(inverse_scale * x[i], lo, hi));
      }
      try_levels();
    };
    for (int step = 0; step <= kSteps; ++step) {
      // Even steps map the extreme value towards -q_neg, odd ones towards
      // q_neg - 1.
      const float r = kFirstR + kStepR * step;
      try_grid(step % 2 == 0 ? static_cast<float>(q_neg) + r
                             : 1.0f - static_cast<float>(q_neg) - r);
    }
    for (const int r : kExtraWholeLevels) {
      if (q_neg - 1 + r >= 1) {
        try_grid(static_cast<float>(q_neg + r));
        try_grid(static_cast<float>(1 - q_neg - r));
      }
    }
    for (int round = 0; round < kRefineRounds && best_scale != 0; ++round) {
      const float inverse_scale = static_cast<float>(1.0 / best_scale);
      if (!std::isfinite(inverse_scale)) break;
      bool changed = false;
      for (int i = 0; i < n; ++i) {
        trial[i] =
            static_cast<int8_t>(RoundClamp(inverse_scale * x[i], lo, hi));
        changed |= trial[i] != best[i];
      }
      if (!changed || !try_levels()) break;
    }
  }
  if (q != nullptr) std::copy(best, best + n, q);
  return static_cast<float>(best_scale);
}

double WeightedSquaredError(const float* x, const float* w, int n, float scale,
                            float offset, const int* q) {
  double error = 0;
  for (int i = 0; i < n; ++i) {
    const double d = static_cast<double>(scale) * q[i] + offset - x[i];
    error += (w != nullptr ? w[i] : 1.0) * d * d;
  }
  return error;
}

}  // namespace quant
