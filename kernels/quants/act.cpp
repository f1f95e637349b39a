// Activation quantizers (formats in act_layout.h). The SIMD and scalar paths give bit-identical
// rows: the same F32 products, rounded to nearest even. A block holding NaN or infinity gets a
// NaN scale and zero quants, so it poisons exactly the dot products it takes part in.
#include <cmath>

#include "kernels/quants/family.h"

namespace sinkserve::quants::SINKSERVE_QUANT_ISA {
namespace {

// Quantizes 32 values to q with scale d = max|x| / 127; returns the sum of the quants, or sets
// *d to NaN (quants 0) when the block is not finite.
int32_t quantize32(const float* x, int8_t* q, float* d) {
#if defined(__AVX2__)
  const __m256 sign = _mm256_set1_ps(-0.0f);
  __m256 v[4], amax = _mm256_setzero_ps(), sum = _mm256_setzero_ps();
  for (int i = 0; i < 4; ++i) {
    v[i] = _mm256_loadu_ps(x + 8 * i);
    amax = _mm256_max_ps(amax, _mm256_andnot_ps(sign, v[i]));
    sum = _mm256_add_ps(sum, v[i]);
  }
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(amax), _mm256_extractf128_ps(amax, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  m = _mm_max_ss(m, _mm_movehdup_ps(m));
  const float a = _mm_cvtss_f32(m);
  if (!std::isfinite(hsum(sum))) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(q), _mm256_setzero_si256());
    *d = NAN;
    return 0;
  }
  const __m256 id = _mm256_set1_ps(a > 0 ? 127.0f / a : 0.0f);
  __m256i i32[4];
  for (int i = 0; i < 4; ++i) i32[i] = _mm256_cvtps_epi32(_mm256_mul_ps(v[i], id));
  const __m256i s = _mm256_add_epi32(_mm256_add_epi32(i32[0], i32[1]), _mm256_add_epi32(i32[2], i32[3]));
  // packs interleave the 128-bit lanes; the permutation restores value order.
  const __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(i32[0], i32[1]), _mm256_packs_epi32(i32[2], i32[3]));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(q),
                      _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
  *d = a / 127.0f;
  return hsum_i32(_mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1)));
#else
  float a = 0, sum = 0;
  for (int i = 0; i < 32; ++i) a = std::fmax(a, std::fabs(x[i])), sum += x[i];
  if (!std::isfinite(sum)) {
    for (int i = 0; i < 32; ++i) q[i] = 0;
    *d = NAN;
    return 0;
  }
  const float id = a > 0 ? 127.0f / a : 0.0f;
  int32_t s = 0;
  for (int i = 0; i < 32; ++i) s += q[i] = int8_t(std::nearbyint(x[i] * id));
  *d = a / 127.0f;
  return s;
#endif
}

}  // namespace

void quantize_act_q8_32(const float* x, uint8_t* out, int64_t n) {
  auto* q = reinterpret_cast<int8_t*>(out);
  auto* d = reinterpret_cast<float*>(out + n);
  float* ds = d + n / 32;
  for (int64_t b = 0; b < n / 32; ++b) {
    const int32_t s = quantize32(x + 32 * b, q + 32 * b, d + b);
    ds[b] = d[b] * float(s);
  }
}

// One scale per 256 values (max over the 8 blocks), sums per 16.
void quantize_act_q8_256(const float* x, uint8_t* out, int64_t n) {
  auto* q = reinterpret_cast<int8_t*>(out);
  auto* d = reinterpret_cast<float*>(out + n);
  auto* sums = reinterpret_cast<int16_t*>(out + n + 4 * (n / 256));
  for (int64_t b = 0; b < n / 256; ++b) {
    const float* xb = x + 256 * b;
    int8_t* qb = q + 256 * b;
    float a = 0, total = 0;
#if defined(__AVX2__)
    __m256 vmax = _mm256_setzero_ps(), vsum = _mm256_setzero_ps();
    for (int i = 0; i < 256; i += 8) {
      const __m256 v = _mm256_loadu_ps(xb + i);
      vmax = _mm256_max_ps(vmax, _mm256_andnot_ps(_mm256_set1_ps(-0.0f), v));
      vsum = _mm256_add_ps(vsum, v);
    }
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(vmax), _mm256_extractf128_ps(vmax, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    a = _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)));
    total = hsum(vsum);
#else
    for (int i = 0; i < 256; ++i) a = std::fmax(a, std::fabs(xb[i])), total += xb[i];
#endif
    if (!std::isfinite(total)) {
      for (int i = 0; i < 256; ++i) qb[i] = 0;
      for (int g = 0; g < 16; ++g) sums[16 * b + g] = 0;
      d[b] = NAN;
      continue;
    }
    const float id = a > 0 ? 127.0f / a : 0.0f;
#if defined(__AVX2__)
    const __m256 vid = _mm256_set1_ps(id);
    for (int i = 0; i < 256; i += 32) {
      __m256i i32[4];
      for (int k = 0; k < 4; ++k) i32[k] = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(xb + i + 8 * k), vid));
      const __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(i32[0], i32[1]), _mm256_packs_epi32(i32[2], i32[3]));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(qb + i),
                          _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
      const __m256i s01 = _mm256_add_epi32(i32[0], i32[1]), s23 = _mm256_add_epi32(i32[2], i32[3]);
      sums[16 * b + i / 16] = int16_t(hsum_i32(_mm_add_epi32(_mm256_castsi256_si128(s01), _mm256_extracti128_si256(s01, 1))));
      sums[16 * b + i / 16 + 1] = int16_t(hsum_i32(_mm_add_epi32(_mm256_castsi256_si128(s23), _mm256_extracti128_si256(s23, 1))));
    }
#else
    for (int g = 0; g < 16; ++g) {
      int s = 0;
      for (int i = 16 * g; i < 16 * g + 16; ++i) s += qb[i] = int8_t(std::nearbyint(xb[i] * id));
      sums[16 * b + g] = int16_t(s);
    }
#endif
    d[b] = a / 127.0f;
  }
}

}  // namespace sinkserve::quants::SINKSERVE_QUANT_ISA
