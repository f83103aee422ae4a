#include "format/scale_fit.h"

#include <algorithm>
#include <cmath>
#include <limits>

// The hot loops also get an AVX2 clone where the compiler supports it. The
// clones compute the same bits: no FMA (not in the "avx2" target, and this
// file is built with -ffp-contract=off) and no reassociation (the sums run in
// fixed lanes).
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define QS_FIT_TARGETS __attribute__((target_clones("avx2", "default")))
#else
#define QS_FIT_TARGETS
#endif

namespace quant {
namespace {

// Candidate scales map the group's range onto q_max + r levels for
// r = kFirstR, kFirstR + StepR, ..., kFirstR + Steps * StepR: r > 0
// clips the far end, r < 0 leaves part of the grid unused. Even steps pin
// the low end of the range to the lowest level, odd steps the high end to
// the highest, so that clipping is tried at both ends. (On exhaustively
// solved 8-value 2-bit groups this lands within 0.1% of the optimum on
// average; pinning one end only, 1.3%.)
// Formats with 32 or more levels (Q5, Q6) get half as many candidates: a
// finer grid no longer pays there.
constexpr float kFirstR = -1.0f;
constexpr int kSteps = 20;
constexpr int kFineLevelsBelow = 32;
float StepR(int levels) { return levels < kFineLevelsBelow ? 0.1f : 0.2f; }
int Steps(int levels) {
  return levels < kFineLevelsBelow ? kSteps : kSteps / 2;
}
// Then a few whole-level r < -1: a group that already lies on a grid but
// does not reach its top level (values dequantized from this format) is fitted
// exactly again, so requantizing is stable.
constexpr int kExtraWholeLevels[] = {-2, -3, -4};
// Rounding/re-fitting rounds after the grid; in practice it settles in one
// or two.
constexpr int kRefineRounds = 4;
// Largest group the fits take (k-quants use 16 and 32).
constexpr int kMaxGroup = 256;
// The weighted sums run in kLanes interleaved partial sums, combined in a
// fixed order: the same bits whether or not the compiler vectorizes them.
constexpr int kLanes = 8;

// Weights to use: `w`, or ones when it is null or all zero (zero weights
// carry no information: such groups are fitted unweighted).
const float* UsableWeights(const float* w, int n, float* ones) {
  bool any = false;
  for (int i = 0; w != nullptr && i < n; ++i) any |= w[i] > 0;
  if (any) return w;
  std::fill(ones, ones + n, 1.0f);
  return ones;
}

// Weighted sums of one rounding (levels held as floats).
struct LevelSums {
  double sq = 0;   // sum w q
  double sqq = 0;  // sum w q^2
  double sqx = 0;  // sum w q x
};

QS_FIT_TARGETS LevelSums SumLevels(const float* x, const float* w, int n,
                                   const float* q) {
  float sq[kLanes] = {}, sqq[kLanes] = {}, sqx[kLanes] = {};
  for (int i = 0; i < n; ++i) {
    const int lane = i % kLanes;
    const float wq = w[i] * q[i];
    sq[lane] += wq;
    sqq[lane] += wq * q[i];
    sqx[lane] += wq * x[i];
  }
  LevelSums s;
  for (int lane = 0; lane < kLanes; ++lane) {
    s.sq += sq[lane];
    s.sqq += sqq[lane];
    s.sqx += sqx[lane];
  }
  return s;
}

// q[i] = RoundClamp(scale * (x[i] - origin), 0, q_max), or with `flip`,
// q_max - RoundClamp(scale * (origin - x[i]), 0, q_max).
QS_FIT_TARGETS void RoundLevels(const float* x, int n, float scale,
                                float origin, float lo, float hi, bool flip,
                                float* q) {
  const float magic = 12582912.0f;
  for (int i = 0; i < n; ++i) {
    float v = flip ? scale * (origin - x[i]) : scale * (x[i] - origin);
    v = v > hi ? hi : v;
    v = v >= lo ? v : lo;
    v = (v + magic) - magic;
    q[i] = flip ? hi - v : v;
  }
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
  float ones[kMaxGroup];
  w = UsableWeights(w, n, ones);
  double sw = 0, sx = 0;
  for (int i = 0; i < n; ++i) {
    sw += w[i];
    sx += w[i] * x[i];
  }
  float best[kMaxGroup] = {};
  float trial[kMaxGroup];
  fit.offset = x_min;
  const float range = x_max - x_min;
  const float inverse_range = range > 0 ? 1.0f / range : 0.0f;
  const float top = static_cast<float>(q_max);
  double best_gain = -std::numeric_limits<double>::infinity();
  double best_scale = 0, best_offset = x_min;
  auto consider = [&]() {
    double scale, offset, gain;
    if (!SolveAffine(SumLevels(x, w, n, trial), sw, sx, nonpositive_offset,
                     &scale, &offset, &gain) ||
        !(gain > best_gain)) {
      return false;
    }
    best_gain = gain;
    best_scale = scale;
    best_offset = offset;
    std::copy(trial, trial + n, best);
    return true;
  };
  if (range > 0 && std::isfinite(inverse_range)) {
    const float step_r = StepR(q_max + 1);
    for (int step = 0; step <= Steps(q_max + 1); ++step) {
      const float levels = top + kFirstR + step_r * step;
      const bool pin_high = step % 2 == 1;
      RoundLevels(x, n, levels * inverse_range, pin_high ? x_max : x_min, 0,
                  top, pin_high, trial);
      consider();
    }
    for (const int r : kExtraWholeLevels) {
      if (q_max + r < 1) continue;
      RoundLevels(x, n, static_cast<float>(q_max + r) * inverse_range, x_min, 0,
                  top, false, trial);
      consider();
    }
    for (int round = 0; round < kRefineRounds && best_scale > 0; ++round) {
      const float inverse_scale = static_cast<float>(1.0 / best_scale);
      if (!std::isfinite(inverse_scale)) break;
      RoundLevels(x, n, inverse_scale, static_cast<float>(best_offset), 0, top,
                  false, trial);
      if (std::equal(trial, trial + n, best) || !consider()) break;
    }
  }
  if (best_scale > 0) {
    fit.scale = static_cast<float>(best_scale);
    fit.offset = static_cast<float>(best_offset);
  }
  // Degenerate groups (all values, and 0 for a non-positive offset, equal)
  // keep q = 0 and the offset x_min.
  for (int i = 0; q != nullptr && i < n; ++i)
    q[i] = static_cast<uint8_t>(best[i]);
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
  float ones[kMaxGroup];
  w = UsableWeights(w, n, ones);
  float best[kMaxGroup] = {};
  float trial[kMaxGroup];
  double best_gain = 0, best_scale = 0;
  const float inverse_extreme = amax > 0 ? -1.0f / extreme : 0.0f;
  const float lo = static_cast<float>(-q_neg),
              hi = static_cast<float>(q_neg - 1);
  auto consider = [&]() {
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
    RoundLevels(x, n, levels * inverse_extreme, 0, lo, hi, false, trial);
    consider();
  };
  if (amax > 0 && std::isfinite(inverse_extreme)) {
    const float step_r = StepR(2 * q_neg);
    for (int step = 0; step <= Steps(2 * q_neg); ++step) {
      // Even steps map the extreme value towards -q_neg, odd ones towards
      // q_neg - 1.
      const float r = kFirstR + step_r * step;
      try_grid(step % 2 == 0 ? static_cast<float>(q_neg) + r
                             : 1.0f - static_cast<float>(q_neg) - r);
    }
    for (const int r : kExtraWholeLevels) {
      if (q_neg - 1 + r < 1) continue;
      try_grid(static_cast<float>(q_neg + r));
      try_grid(static_cast<float>(1 - q_neg - r));
    }
    for (int round = 0; round < kRefineRounds && best_scale != 0; ++round) {
      const float inverse_scale = static_cast<float>(1.0 / best_scale);
      if (!std::isfinite(inverse_scale)) break;
      RoundLevels(x, n, inverse_scale, 0, lo, hi, false, trial);
      if (std::equal(trial, trial + n, best) || !consider()) break;
    }
  }
  for (int i = 0; q != nullptr && i < n; ++i)
    q[i] = static_cast<int8_t>(best[i]);
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
