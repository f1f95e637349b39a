// Scale searches of the quantizers (built only into the scalar reference translation units): for
// a group of values x with importance weights w, the integer codes and the scale (and offset)
// that minimise the weighted squared error sum w (x - value)^2. A code set fixes the optimal
// scale in closed form (least squares); the search is over the candidate scales that produce
// the code sets, trying a grid of stretches of the plain max-based scale.
#pragma once
#include <cmath>
#include <cstdint>

namespace sinkserve::quants {

// Nearest integer in [lo, hi] (ties to even); NaN gives lo. Adding 1.5 * 2^23 rounds in the FPU's
// mode without a libm call, exact for the |v| <= 2^22 left after clamping.
static inline int round_clamp(float v, int lo, int hi) {
  if (!(v >= float(lo))) return lo;
  if (v >= float(hi)) return hi;
  return int((v + 12582912.0f) - 12582912.0f);
}

// Importance of each value: its magnitude plus the group's RMS, so that large values (which
// dominate dot products) are fitted best without ignoring the small ones.
static inline void magnitude_weights(const float* x, int n, float* w) {
  float ss = 0;
  for (int i = 0; i < n; ++i) ss += x[i] * x[i];
  const float rms = std::sqrt(ss / float(n));
  for (int i = 0; i < n; ++i) w[i] = rms + std::fabs(x[i]);
}

// Codes q in [qmin, qmax] (qmin < 0 < qmax) and scale s with x ~ s q; returns s (0 for an
// all-zero or non-finite group, codes 0). The value of largest magnitude is tried at both ends of
// the range: the asymmetric end (-8 of -8..7) gives one more level to the side that needs it.
static inline float fit_scale(const float* x, const float* w, int n, int qmin, int qmax, int* q) {
  float amax = 0, vmax = 0;
  for (int i = 0; i < n; ++i)
    if (std::fabs(x[i]) > amax) amax = std::fabs(x[i]), vmax = x[i];
  if (!(amax > 0) || !std::isfinite(amax)) {
    for (int i = 0; i < n; ++i) q[i] = 0;
    return 0.0f;
  }
  float best_s = 0, best_gain = -1;
  int tmp[256];
  for (int end = 0; end < 2; ++end) {
    const float range = float(end == 0 ? -qmin : qmax);
    const float sign = end == 0 ? -1.0f : 1.0f;  // vmax maps to qmin or qmax
    for (int k = -8; k <= 6; ++k) {
      const float stretch = range + 0.1f * float(k);
      if (stretch <= 0.5f) continue;
      const float inv = sign * stretch / vmax;
      float sxq = 0, sqq = 0;
      for (int i = 0; i < n; ++i) {
        tmp[i] = round_clamp(x[i] * inv, qmin, qmax);
        sxq += w[i] * x[i] * float(tmp[i]);
        sqq += w[i] * float(tmp[i]) * float(tmp[i]);
      }
      // Error at the optimal scale is sum w x^2 - sxq^2 / sqq: maximise the subtracted gain.
      if (sqq > 0 && sxq * sxq / sqq > best_gain) {
        best_gain = sxq * sxq / sqq;
        best_s = sxq / sqq;
        for (int i = 0; i < n; ++i) q[i] = tmp[i];
      }
    }
  }
  return best_s;
}

// Codes q in [0, qmax], scale s and offset b with x ~ s q + b. With nonpositive_offset the offset
// is kept <= 0 (the K-quants store it as a subtracted minimum). Returns the squared error.
static inline float fit_scale_offset(const float* x, const float* w, int n, int qmax, bool nonpositive_offset,
                                     float* s_out, float* b_out, int* q) {
  float lo = x[0], hi = x[0];
  for (int i = 1; i < n; ++i) lo = std::fmin(lo, x[i]), hi = std::fmax(hi, x[i]);
  if (nonpositive_offset) lo = std::fmin(lo, 0.0f);
  if (!(hi > lo) || !std::isfinite(hi - lo)) {
    *s_out = 0;
    *b_out = std::isfinite(lo) ? lo : 0.0f;
    for (int i = 0; i < n; ++i) q[i] = 0;
    return 0;
  }
  float best_err = INFINITY;
  int tmp[256];
  *s_out = (hi - lo) / float(qmax);
  *b_out = lo;
  for (int i = 0; i < n; ++i) q[i] = round_clamp((x[i] - lo) / *s_out, 0, qmax);
  for (int k = -10; k <= 10; ++k) {
    const float inv = (float(qmax) + 0.1f * float(k)) / (hi - lo);
    if (inv <= 0) continue;
    float sw = 0, sq = 0, sqq = 0, sx = 0, sqx = 0;
    for (int i = 0; i < n; ++i) {
      tmp[i] = round_clamp((x[i] - lo) * inv, 0, qmax);
      const float qi = float(tmp[i]);
      sw += w[i], sq += w[i] * qi, sqq += w[i] * qi * qi, sx += w[i] * x[i], sqx += w[i] * qi * x[i];
    }
    const float det = sw * sqq - sq * sq;
    if (!(det > 0)) continue;
    float s = (sw * sqx - sq * sx) / det, b = (sqq * sx - sq * sqx) / det;
    if (nonpositive_offset && b > 0) b = 0, s = sqx / sqq;
    if (!(s > 0)) continue;
    float err = 0;
    for (int i = 0; i < n; ++i) {
      const float e = s * float(tmp[i]) + b - x[i];
      err += w[i] * e * e;
    }
    if (err < best_err) {
      best_err = err;
      *s_out = s;
      *b_out = b;
      for (int i = 0; i < n; ++i) q[i] = tmp[i];
    }
  }
  return best_err;
}

// Codes q (indices into the ascending 16-entry `table`) and scale s with x ~ s table[q]: the
// non-linear grid of IQ4_NL. Returns s (0 for an all-zero or non-finite group).
// The nearest entry is the number of midpoints between neighbours below v (ties to the lower).
static inline int nearest_in_table(const int8_t* table, float v) {
  int q = 0;
  for (int k = 0; k < 15; ++k) q += v > 0.5f * float(table[k] + table[k + 1]);
  return q;
}

static inline float fit_scale_table(const float* x, const float* w, int n, const int8_t* table, int* q) {
  float amax = 0, vmax = 0;
  for (int i = 0; i < n; ++i)
    if (std::fabs(x[i]) > amax) amax = std::fabs(x[i]), vmax = x[i];
  if (!(amax > 0) || !std::isfinite(amax)) {
    for (int i = 0; i < n; ++i) q[i] = nearest_in_table(table, 0.0f);
    return 0.0f;
  }
  float best_s = 0, best_gain = -1;
  int tmp[256];
  for (int end = 0; end < 2; ++end) {
    const float edge = float(end == 0 ? table[0] : table[15]);  // vmax maps near either end
    for (int k = -8; k <= 8; ++k) {
      const float inv = (edge + 0.02f * float(k) * edge) / vmax;
      float sxq = 0, sqq = 0;
      for (int i = 0; i < n; ++i) {
        tmp[i] = nearest_in_table(table, x[i] * inv);
        const float t = float(table[tmp[i]]);
        sxq += w[i] * x[i] * t;
        sqq += w[i] * t * t;
      }
      if (sqq > 0 && sxq * sxq / sqq > best_gain) {
        best_gain = sxq * sxq / sqq;
        best_s = sxq / sqq;
        for (int i = 0; i < n; ++i) q[i] = tmp[i];
      }
    }
  }
  return best_s;
}

}  // namespace sinkserve::quants
