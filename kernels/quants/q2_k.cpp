// Q2_K: super-blocks of 256 values in 16 groups of 16, each group with a 4-bit scale and 4-bit
// minimum (x = d * scale * q - dmin * min), 2-bit codes. Dot products against Q8_256 activations:
// four codes per byte become four registers of 32 codes (two groups each), weighted per 16-value
// half by the group scales; the minimums meet the activations' 16-value sums.
#include "kernels/quants/family.h"

#if defined(SINKSERVE_QUANT_REFERENCE)
#include <cmath>

#include "kernels/quants/fit.h"
#endif

namespace sinkserve::quants::SINKSERVE_QUANT_ISA {
namespace {

#if !defined(__AVX2__)  // the reference; SIMD builds decode in registers
void dequantize(const void* src, float* dst, int64_t n) {
  const auto* blocks = static_cast<const BlockQ2_K*>(src);
  for (int64_t i = 0; i < n / 256; ++i) {
    const BlockQ2_K& b = blocks[i];
    const float d = fp16(b.d), dmin = fp16(b.dmin);
    for (int h = 0; h < 2; ++h)
      for (int j = 0; j < 4; ++j)
        for (int half = 0; half < 2; ++half) {
          const uint8_t sc = b.scales[8 * h + 2 * j + half];
          const float dl = d * float(sc & 15), ml = dmin * float(sc >> 4);
          for (int l = 16 * half; l < 16 * half + 16; ++l)
            dst[256 * i + 128 * h + 32 * j + l] = dl * float((b.qs[32 * h + l] >> (2 * j)) & 3) - ml;
        }
  }
}
#endif

void decode(const void* src, float* dst, int64_t n) {
#if defined(__AVX2__)
  const auto* blocks = static_cast<const BlockQ2_K*>(src);
  const __m256i two_bits = _mm256_set1_epi8(3);
  for (int64_t i = 0; i < n / 256; ++i) {
    const BlockQ2_K& b = blocks[i];
    const float d = fp16(b.d), dmin = fp16(b.dmin);
    for (int h = 0; h < 2; ++h) {
      const __m256i q = load256(b.qs + 32 * h);
      for (int j = 0; j < 4; ++j) {
        const __m256i w = _mm256_and_si256(_mm256_srli_epi16(q, 2 * j), two_bits);
        const uint8_t s0 = b.scales[8 * h + 2 * j], s1 = b.scales[8 * h + 2 * j + 1];
        float* y = dst + 256 * i + 128 * h + 32 * j;
        store16<false>(_mm256_castsi256_si128(w), d * float(s0 & 15), -(dmin * float(s0 >> 4)), y);
        store16<false>(_mm256_extracti128_si256(w, 1), d * float(s1 & 15), -(dmin * float(s1 >> 4)), y + 16);
      }
    }
  }
#else
  dequantize(src, dst, n);
#endif
}

struct Dot {
  template <int NT>
  static void run(const uint8_t* row, const uint8_t* xq, size_t xs, int64_t cols, float* out) {
    const auto* blocks = reinterpret_cast<const BlockQ2_K*>(row);
    const int64_t nb = cols / 256;
#if defined(__AVX2__)
    __m256 acc[NT], mins_acc[NT];
    for (int t = 0; t < NT; ++t) acc[t] = mins_acc[t] = _mm256_setzero_ps();
    const __m256i two_bits = _mm256_set1_epi8(3);
    for (int64_t i = 0; i < nb; ++i) {
      const BlockQ2_K& b = blocks[i];
      const __m128i packed = load128(b.scales);
      const __m128i sc8 = _mm_and_si128(packed, _mm_set1_epi8(15));
      const __m256i mins = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(packed, 4), _mm_set1_epi8(15)));
      __m256i isum[NT];
      for (int t = 0; t < NT; ++t) isum[t] = _mm256_setzero_si256();
#pragma GCC unroll 2
      for (int h = 0; h < 2; ++h) {
        const __m256i q = load256(b.qs + 32 * h);
#pragma GCC unroll 4
        for (int j = 0; j < 4; ++j) {
          const __m256i w = _mm256_and_si256(_mm256_srli_epi16(q, 2 * j), two_bits);
          const int64_t g = 8 * h + 2 * j;
          const __m256i s = _mm256_cvtepu8_epi16(_mm_shuffle_epi8(
              sc8, _mm_set_epi64x(int64_t(0x0101010101010101ull * uint64_t(g + 1)), int64_t(0x0101010101010101ull * uint64_t(g)))));
#pragma GCC unroll 4
          for (int t = 0; t < NT; ++t)
            isum[t] = _mm256_add_epi32(isum[t], dot_us_scaled(w, load256(xq + t * xs + 256 * i + 128 * h + 32 * j), s));
        }
      }
      const float d = fp16(b.d), dmin = fp16(b.dmin);
#pragma GCC unroll 4
      for (int t = 0; t < NT; ++t) {
        const uint8_t* x = xq + t * xs;
        const float dx = q8_256_scales(x, cols)[i];
        const __m256i m = _mm256_madd_epi16(load256(q8_256_sums(x, cols) + 16 * i), mins);
        acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[t]), _mm256_set1_ps(d * dx), acc[t]);
        mins_acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(m), _mm256_set1_ps(dmin * dx), mins_acc[t]);
      }
    }
    for (int t = 0; t < NT; ++t) out[t] = hsum(_mm256_sub_ps(acc[t], mins_acc[t]));
#else
    float mins_acc[NT];
    for (int t = 0; t < NT; ++t) mins_acc[t] = 0;
    for (int t = 0; t < NT; ++t) {
      const uint8_t* x = xq + t * xs;
      const auto* xv = reinterpret_cast<const int8_t*>(x);
      const int16_t* bs = q8_256_sums(x, cols);
      float sum = 0;
      for (int64_t i = 0; i < nb; ++i) {
        const BlockQ2_K& b = blocks[i];
        int32_t isum = 0, msum = 0;
        for (int h = 0; h < 2; ++h)
          for (int j = 0; j < 4; ++j)
            for (int half = 0; half < 2; ++half) {
              int32_t s = 0;
              for (int l = 16 * half; l < 16 * half + 16; ++l)
                s += ((b.qs[32 * h + l] >> (2 * j)) & 3) * xv[256 * i + 128 * h + 32 * j + l];
              isum += (b.scales[8 * h + 2 * j + half] & 15) * s;
            }
        for (int g = 0; g < 16; ++g) msum += (b.scales[g] >> 4) * bs[16 * i + g];
        const float dx = q8_256_scales(x, cols)[i];
        sum += dx * fp16(b.d) * float(isum);
        mins_acc[t] += dx * fp16(b.dmin) * float(msum);
      }
      out[t] = sum - mins_acc[t];
    }
#endif
  }
};

}  // namespace

extern const CpuOps ops_Q2_K = {gemv<Dot>, decode};

#if defined(SINKSERVE_QUANT_REFERENCE)
void dequantize_Q2_K(const void* src, float* dst, int64_t n) { dequantize(src, dst, n); }

void quantize_Q2_K(const float* src, void* dst, int64_t n) {
  auto* blocks = static_cast<BlockQ2_K*>(dst);
  for (int64_t i = 0; i < n / 256; ++i) {
    const float* x = src + 256 * i;
    BlockQ2_K& b = blocks[i];
    float w[256], s[16], m[16];
    int q[256];
    magnitude_weights(x, 256, w);
    float smax = 0, mmax = 0;
    for (int g = 0; g < 16; ++g) {
      float off;
      fit_scale_offset(x + 16 * g, w + 16 * g, 16, 3, true, &s[g], &off, q + 16 * g);
      m[g] = -off;
      smax = std::fmax(smax, s[g]);
      mmax = std::fmax(mmax, m[g]);
    }
    b.d = f32_to_f16(smax / 15.0f);
    b.dmin = f32_to_f16(mmax / 15.0f);
    const float d = f16_to_f32(b.d), dmin = f16_to_f32(b.dmin);
    for (int g = 0; g < 16; ++g) {
      const int sc = d > 0 ? round_clamp(s[g] / d, 0, 15) : 0, mn = dmin > 0 ? round_clamp(m[g] / dmin, 0, 15) : 0;
      b.scales[g] = uint8_t(sc | (mn << 4));
      const float dg = d * float(sc), mg = dmin * float(mn);
      for (int l = 0; l < 16; ++l) q[16 * g + l] = dg > 0 ? round_clamp((x[16 * g + l] + mg) / dg, 0, 3) : 0;
    }
    std::memset(b.qs, 0, sizeof b.qs);
    for (int h = 0; h < 2; ++h)
      for (int j = 0; j < 4; ++j)
        for (int l = 0; l < 32; ++l) b.qs[32 * h + l] |= uint8_t(q[128 * h + 32 * j + l] << (2 * j));
  }
}
#endif

}  // namespace sinkserve::quants::SINKSERVE_QUANT_ISA
