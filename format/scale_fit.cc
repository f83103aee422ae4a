#include "format/scale_fit.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>

// The hot loop (evaluating candidate scales) has an AVX2 version chosen at
// run time that takes eight candidates at once, one per lane. It computes
// the same bits as the scalar loop: the same operations per candidate, in
// the same order, and no FMA (this file is built with -ffp-contract=off).
#if defined(__x86_64__)
#include <immintrin.h>
#define QS_FIT_X86 1
#else
#define QS_FIT_X86 0
#endif

namespace quant {
namespace {

// Candidate scales map the group's range onto q_max + r levels for
// r = kFirstR, kFirstR + StepR, ..., kFirstR + Steps * StepR: r > 0 clips
// the far end, r < 0 leaves part of the grid unused. Even steps pin the low
// end of the range to the lowest level, odd steps the high end to the
// highest, so that clipping is tried at both ends. (On exhaustively solved
// 8-value 2-bit groups this lands within 0.1% of the optimum on average;
// pinning one end only, 1.3%.) Affine formats with 32 or more levels (Q5)
// get half as many candidates, symmetric ones (Q3_K, Q6_K) a quarter: on
// heavy-tailed data that costs them 0.1% in RMS error (the affine 2- and
// 4-bit fits would lose 0.8%) and makes them 3x faster.
constexpr float kFirstR = -1.0f;
constexpr int kSteps = 20;
constexpr int kFineLevelsBelow = 32;
float StepR(int levels) { return levels < kFineLevelsBelow ? 0.1f : 0.2f; }
int Steps(int levels) {
  return levels < kFineLevelsBelow ? kSteps : kSteps / 2;
}
constexpr float kSymmetricStepR = 0.4f;
constexpr int kSymmetricSteps = kSteps / 4;
// Then a few whole-level r < -1: a group that already lies on a grid but
// does not reach its top level (values dequantized from this format) is fitted
// exactly again, so requantizing is stable.
constexpr int kExtraWholeLevels[] = {-2, -3, -4};
// Largest group the fits take (k-quants use 16 and 32).
constexpr int kMaxGroup = 256;
constexpr int kMaxCandidates = 32;
constexpr int kLanes = 8;

// One candidate rounding: level(x) = base + sign * clamp(round(scale *
// (x - origin)), lo, hi) -- sign -1 with base hi counts levels down from the
// top (the high end pinned), with scale negated so that the clamp still
// applies to a non-negative count.
struct Candidate {
  float scale;
  float origin;
  float base;
  float sign;
};

// Weighted sums of one rounding, each accumulated in element order.
struct LevelSums {
  double sq;   // sum w q
  double sqq;  // sum w q^2
  double sqx;  // sum w q x
};

// Weights to use: `w`, or ones when it is null or all zero (zero weights
// carry no information: such groups are fitted unweighted).
const float* UsableWeights(const float* w, int n, float* ones) {
  bool any = false;
  for (int i = 0; w != nullptr && i < n; ++i) any |= w[i] > 0;
  if (any) return w;
  std::fill(ones, ones + n, 1.0f);
  return ones;
}

inline float Level(const Candidate& c, float x, float lo, float hi) {
  return c.base + c.sign * ClampRound(c.scale * (x - c.origin), lo, hi);
}

void EvaluateScalar(const float* x, const float* w, int n, float lo, float hi,
                    const Candidate* c, int count, LevelSums* out) {
  for (int k = 0; k < count; ++k) {
    float sq = 0, sqq = 0, sqx = 0;
    for (int i = 0; i < n; ++i) {
      const float q = Level(c[k], x[i], lo, hi);
      const float wq = w[i] * q;
      sq += wq;
      sqq += wq * q;
      sqx += wq * x[i];
    }
    out[k] = {sq, sqq, sqx};
  }
}

#if QS_FIT_X86
__attribute__((target("avx2"))) void EvaluateAvx2(const float* x,
                                                  const float* w, int n,
                                                  float lo, float hi,
                                                  const Candidate* c, int count,
                                                  LevelSums* out) {
  const __m256 vlo = _mm256_set1_ps(lo), vhi = _mm256_set1_ps(hi);
  const __m256 magic = _mm256_set1_ps(kRoundMagic);
  for (int first = 0; first < count; first += kLanes) {
    alignas(32) float scale[kLanes] = {}, origin[kLanes] = {},
                      base[kLanes] = {}, sign[kLanes] = {};
    const int lanes = std::min(kLanes, count - first);
    for (int l = 0; l < lanes; ++l) {
      scale[l] = c[first + l].scale;
      origin[l] = c[first + l].origin;
      base[l] = c[first + l].base;
      sign[l] = c[first + l].sign;
    }
    const __m256 vscale = _mm256_load_ps(scale),
                 vorigin = _mm256_load_ps(origin);
    const __m256 vbase = _mm256_load_ps(base), vsign = _mm256_load_ps(sign);
    __m256 sq = _mm256_setzero_ps(), sqq = sq, sqx = sq;
    for (int i = 0; i < n; ++i) {
      const __m256 xi = _mm256_set1_ps(x[i]);
      __m256 v = _mm256_mul_ps(vscale, _mm256_sub_ps(xi, vorigin));
      v = _mm256_blendv_ps(v, vhi, _mm256_cmp_ps(v, vhi, _CMP_GT_OQ));
      v = _mm256_blendv_ps(vlo, v, _mm256_cmp_ps(v, vlo, _CMP_GE_OQ));
      v = _mm256_sub_ps(_mm256_add_ps(v, magic), magic);
      const __m256 q = _mm256_add_ps(vbase, _mm256_mul_ps(vsign, v));
      const __m256 wq = _mm256_mul_ps(_mm256_set1_ps(w[i]), q);
      sq = _mm256_add_ps(sq, wq);
      sqq = _mm256_add_ps(sqq, _mm256_mul_ps(wq, q));
      sqx = _mm256_add_ps(sqx, _mm256_mul_ps(wq, xi));
    }
    alignas(32) float a[kLanes], b[kLanes], d[kLanes];
    _mm256_store_ps(a, sq);
    _mm256_store_ps(b, sqq);
    _mm256_store_ps(d, sqx);
    for (int l = 0; l < lanes; ++l) out[first + l] = {a[l], b[l], d[l]};
  }
}

bool CpuHasAvx2() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") != 0;
}

std::atomic<bool>& UseAvx2() {
  static std::atomic<bool> use{CpuHasAvx2()};
  return use;
}
#endif

// The sums of each candidate's rounding.
void Evaluate(const float* x, const float* w, int n, float lo, float hi,
              const Candidate* c, int count, LevelSums* out) {
#if QS_FIT_X86
  if (UseAvx2().load(std::memory_order_relaxed)) {
    return EvaluateAvx2(x, w, n, lo, hi, c, count, out);
  }
#endif
  EvaluateScalar(x, w, n, lo, hi, c, count, out);
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

bool UseScalarFitsForTesting(bool scalar) {
#if QS_FIT_X86
  UseAvx2().store(!scalar && CpuHasAvx2());
  return UseAvx2().load();
#else
  (void)scalar;
  return false;
#endif
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
  const float top = static_cast<float>(q_max);
  const float range = x_max - x_min;
  const float inverse_range = range > 0 ? 1.0f / range : 0.0f;
  fit.offset = x_min;
  // Degenerate groups (all values, and 0 for a non-positive offset, equal)
  // keep q = 0 and the offset x_min.
  if (q != nullptr) std::fill(q, q + n, 0);
  if (range > 0 && std::isfinite(inverse_range)) {
    Candidate candidates[kMaxCandidates];
    int count = 0;
    const float step_r = StepR(q_max + 1);
    for (int step = 0; step <= Steps(q_max + 1); ++step) {
      const float levels = top + kFirstR + step_r * step;
      if (step % 2 == 0) {  // Low end on level 0.
        candidates[count++] = {levels * inverse_range, x_min, 0, 1};
      } else {  // High end on level q_max, counting down.
        candidates[count++] = {-(levels * inverse_range), x_max, top, -1};
      }
    }
    for (const int r : kExtraWholeLevels) {
      if (q_max + r < 1) continue;
      candidates[count++] = {static_cast<float>(q_max + r) * inverse_range,
                             x_min, 0, 1};
    }
    LevelSums sums[kMaxCandidates];
    Evaluate(x, w, n, 0, top, candidates, count, sums);
    // All solutions first (independent, so they pipeline), then the first
    // with the largest gain.
    double gains[kMaxCandidates], scales[kMaxCandidates],
        offsets[kMaxCandidates];
    for (int k = 0; k < count; ++k) {
      if (!SolveAffine(sums[k], sw, sx, nonpositive_offset, &scales[k],
                       &offsets[k], &gains[k])) {
        gains[k] = -std::numeric_limits<double>::infinity();
      }
    }
    int best_index = -1;
    double best_gain = -std::numeric_limits<double>::infinity();
    for (int k = 0; k < count; ++k) {
      const bool better = gains[k] > best_gain;
      best_gain = better ? gains[k] : best_gain;
      best_index = better ? k : best_index;
    }
    if (best_index >= 0) {
      fit.scale = static_cast<float>(scales[best_index]);
      fit.offset = static_cast<float>(offsets[best_index]);
      for (int i = 0; q != nullptr && i < n; ++i) {
        q[i] =
            static_cast<uint8_t>(Level(candidates[best_index], x[i], 0, top));
      }
    }
  }
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
  if (q != nullptr) std::fill(q, q + n, 0);
  const float lo = static_cast<float>(-q_neg),
              hi = static_cast<float>(q_neg - 1);
  const float inverse_extreme = amax > 0 ? -1.0f / extreme : 0.0f;
  double best_scale = 0;
  if (amax > 0 && std::isfinite(inverse_extreme)) {
    // Candidates map the extreme value to -levels.
    Candidate candidates[kMaxCandidates];
    int count = 0;
    for (int step = 0; step <= kSymmetricSteps; ++step) {
      // Even steps map the extreme value towards -q_neg, odd ones towards
      // q_neg - 1.
      const float r = kFirstR + kSymmetricStepR * step;
      const float levels = step % 2 == 0 ? static_cast<float>(q_neg) + r
                                         : 1.0f - static_cast<float>(q_neg) - r;
      candidates[count++] = {levels * inverse_extreme, 0, 0, 1};
    }
    for (const int r : kExtraWholeLevels) {
      if (q_neg - 1 + r < 1) continue;
      candidates[count++] = {static_cast<float>(q_neg + r) * inverse_extreme, 0,
                             0, 1};
      candidates[count++] = {
          static_cast<float>(1 - q_neg - r) * inverse_extreme, 0, 0, 1};
    }
    LevelSums sums[kMaxCandidates];
    Evaluate(x, w, n, lo, hi, candidates, count, sums);
    // The best by sqx^2 / sqq, the error its least-squares scale removes:
    // all gains first (independent, so they pipeline), then the first
    // largest.
    double gains[kMaxCandidates];
    for (int k = 0; k < count; ++k) {
      gains[k] = sums[k].sqq > 0 ? sums[k].sqx * sums[k].sqx / sums[k].sqq : 0;
    }
    int best_index = -1;
    double best_gain = 0;
    for (int k = 0; k < count; ++k) {
      const bool better = gains[k] > best_gain;
      best_gain = better ? gains[k] : best_gain;
      best_index = better ? k : best_index;
    }
    if (best_index >= 0) {
      best_scale = sums[best_index].sqx / sums[best_index].sqq;
      for (int i = 0; q != nullptr && i < n; ++i) {
        q[i] = static_cast<int8_t>(Level(candidates[best_index], x[i], lo, hi));
      }
    }
  }
  return static_cast<float>(best_scale);
}

}  // namespace quant
