// Error-minimizing scale fits for block quantization: given a group of
// values x and per-value weights w, choose the scale (and offset) and the
// integer levels q that make sum_i w_i * (dequant(q_i) - x_i)^2 small.
//
// For a fixed assignment q the best scale (and offset) is a weighted least
// squares solution in closed form; for a fixed scale the best q is the
// clamped rounding. Neither alone finds a good optimum (the problem is not
// convex in q), so each fit tries a grid of candidate scales spread around
// the min-max one, solves the least squares for each candidate's rounding
// and keeps the best. (Alternating rounding and re-fitting from there was
// tried: it lowered the RMS error by under 0.1% for 20-30% more time.)
// Every step is deterministic (no reductions in varying order), so
// results are bit-reproducible.
//
// Inputs must be finite; the caller checks.
#ifndef FORMAT_SCALE_FIT_H_
#define FORMAT_SCALE_FIT_H_

#include <cstdint>

namespace quant {

// x ~= scale * q + offset with integer q in [0, q_max].
struct AffineFit {
  float scale = 0.0f;   // >= 0.
  float offset = 0.0f;  // <= 0 when the fit asked for a non-positive offset.
};

// Fits x[0..n) with levels q in [0, q_max]. `w` may be null (all weights 1);
// weights must be >= 0. With `nonpositive_offset` the offset is kept <= 0
// (the k-quant formats store it as an unsigned "min" that is subtracted).
// Writes the chosen levels to q[0..n) (when q is not null).
AffineFit FitAffine(const float* x, const float* w, int n, int q_max,
                    bool nonpositive_offset, uint8_t* q);

// Fits x ~= scale * q with integer q in [-q_neg, q_neg - 1] (the signed
// range of the symmetric formats: -8..7, -16..15, -4..3, -32..31). The
// scale may be negative: the value of largest magnitude is mapped towards
// -q_neg so that the extra negative level is used. Writes q[0..n).
float FitSymmetric(const float* x, const float* w, int n, int q_neg, int8_t* q);

// 1.5 * 2^23: adding and subtracting it rounds |v| < 2^22 to the nearest
// integer, ties to even.
inline constexpr float kRoundMagic = 12582912.0f;

// Clamps v to [lo, hi] (NaN to lo), then rounds it to the nearest integer
// (ties to even) with kRoundMagic, which vectorizes. Inline: the quantizers
// call it per value.
inline float ClampRound(float v, float lo, float hi) {
  v = v > hi ? hi : v;
  v = v >= lo ? v : lo;
  return (v + kRoundMagic) - kRoundMagic;
}

inline int RoundClamp(float v, int lo, int hi) {
  return static_cast<int>(
      ClampRound(v, static_cast<float>(lo), static_cast<float>(hi)));
}

// For tests: force the portable loops (true) or the fastest this CPU has
// (false) from now on; returns whether the AVX2 loops are in use. Not to be
// called while another thread is fitting.
bool UseScalarFitsForTesting(bool scalar);

}  // namespace quant

#endif  // FORMAT_SCALE_FIT_H_
