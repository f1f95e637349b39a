// Q6_K: super-blocks of 256 values in 16 groups of 16 with int8 scales, 6-bit codes (4 low bits
// in ql, 2 high bits in qh) for code - 32. Dot products against Q8_256 activations: codes taken
// unsigned (0..63, so vpmaddubsw's int16 pairs cannot saturate), weighted per 16-value half
// register by the group's scale, and the -32 applied once per group through the activation sums.
#include "kernels/quants/family.h"

#if defined(SINKSERVE_QUANT_REFERENCE)
#include <cmath>

#include "kernels/quants/fit.h"
#endif

namespace sinkserve::quants::SINKSERVE_QUANT_ISA {
namespace {

// Code (0..63) of value 128 h + 32 k + l.
inline int code(const BlockQ6_K& b, int h, int k, int l) {
  const int lo = b.ql[64 * h + 32 * (k & 1) + l];
  return ((k < 2 ? lo : lo >> 4) & 15) | (((b.qh[32 * h + l] >> (2 * k)) & 3) << 4);
}

#if !defined(__AVX2__)  // the reference; SIMD builds decode in registers
void dequantize(const void* src, float* dst, int64_t n) {
  const auto* blocks = static_cast<const BlockQ6_K*>(src);
  for (int64_t i = 0; i < n / 256; ++i) {
    const BlockQ6_K& b = blocks[i];
    const float d = fp16(b.d);
    for (int h = 0; h < 2; ++h)
      for (int k = 0; k < 4; ++k)
        for (int l = 0; l < 32; ++l)
          dst[256 * i + 128 * h + 32 * k + l] = d * float(b.scales[8 * h + 2 * k + l / 16]) * float(code(b, h, k, l) - 32);
  }
}
#endif

#if defined(__AVX2__)
// The 32 codes (0..63) of values 128 h + 32 k + l, l < 32.
inline void codes(const BlockQ6_K& b, int h, __m256i* w) {
  const __m256i low4 = _mm256_set1_epi8(0x0f), bits45 = _mm256_set1_epi8(0x30);
  const __m256i q0 = load256(b.ql + 64 * h), q1 = load256(b.ql + 64 * h + 32), qh = load256(b.qh + 32 * h);
  w[0] = _mm256_or_si256(_mm256_and_si256(q0, low4), _mm256_and_si256(_mm256_slli_epi16(qh, 4), bits45));
  w[1] = _mm256_or_si256(_mm256_and_si256(q1, low4), _mm256_and_si256(_mm256_slli_epi16(qh, 2), bits45));
  w[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(q0, 4), low4), _mm256_and_si256(qh, bits45));
  w[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(q1, 4), low4), _mm256_and_si256(_mm256_srli_epi16(qh, 2), bits45));
}
#endif

void decode(const void* src, float* dst, int64_t n) {
#if defined(__AVX2__)
  const auto* blocks = static_cast<const BlockQ6_K*>(src);
  for (int64_t i = 0; i < n / 256; ++i) {
    const BlockQ6_K& b = blocks[i];
    const float d = fp16(b.d);
    for (int h = 0; h < 2; ++h) {
      __m256i w[4];
      codes(b, h, w);
      for (int k = 0; k < 4; ++k) {
        float* y = dst + 256 * i + 128 * h + 32 * k;
        const float s0 = d * float(b.scales[8 * h + 2 * k]), s1 = d * float(b.scales[8 * h + 2 * k + 1]);
        store16<false>(_mm256_castsi256_si128(w[k]), s0, -32.0f * s0, y);
        store16<false>(_mm256_extracti128_si256(w[k], 1), s1, -32.0f * s1, y + 16);
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
    const auto* blocks = reinterpret_cast<const BlockQ6_K*>(row);
    const int64_t nb = cols / 256;
#if defined(__AVX2__)
    __m256 acc[NT];
    for (int t = 0; t < NT; ++t) acc[t] = _mm256_setzero_ps();
    for (int64_t i = 0; i < nb; ++i) {
      const BlockQ6_K& b = blocks[i];
      const __m128i sc8 = load128(b.scales);
      __m256i isum[NT];
      for (int t = 0; t < NT; ++t) isum[t] = _mm256_setzero_si256();
#pragma GCC unroll 2
      for (int h = 0; h < 2; ++h) {
        __m256i w[4];
        codes(b, h, w);
#pragma GCC unroll 4
        for (int k = 0; k < 4; ++k) {
          // Scales of groups g and g + 1 (g = 8h + 2k), one per 16-value half, as int16.
          const int64_t g = 8 * h + 2 * k;
          const __m256i s = _mm256_cvtepi8_epi16(_mm_shuffle_epi8(
              sc8, _mm_set_epi64x(int64_t(0x0101010101010101ull * uint64_t(g + 1)), int64_t(0x0101010101010101ull * uint64_t(g)))));
#pragma GCC unroll 4
          for (int t = 0; t < NT; ++t)
            isum[t] = _mm256_add_epi32(isum[t], dot_us_scaled(w[k], load256(xq + t * xs + 256 * i + 128 * h + 32 * k), s));
        }
      }
      const float d = fp16(b.d);
      const __m256i sc16 = _mm256_cvtepi8_epi16(sc8);
#pragma GCC unroll 4
      for (int t = 0; t < NT; ++t) {
        const uint8_t* x = xq + t * xs;
        const __m256i offset = _mm256_madd_epi16(load256(q8_256_sums(x, cols) + 16 * i), sc16);
        const __m256i s = _mm256_sub_epi32(isum[t], _mm256_slli_epi32(offset, 5));
        acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_set1_ps(d * q8_256_scales(x, cols)[i]), acc[t]);
      }
    }
    for (int t = 0; t < NT; ++t) out[t] = hsum(acc[t]);
#else
    for (int t = 0; t < NT; ++t) {
      const uint8_t* x = xq + t * xs;
      const auto* xv = reinterpret_cast<const int8_t*>(x);
      float sum = 0;
      for (int64_t i = 0; i < nb; ++i) {
        const BlockQ6_K& b = blocks[i];
        int32_t isum = 0;
        for (int h = 0; h < 2; ++h)
          for (int k = 0; k < 4; ++k)
            for (int half = 0; half < 2; ++half) {
              int32_t s = 0;
              for (int l = 16 * half; l < 16 * half + 16; ++l)
                s += (code(b, h, k, l) - 32) * xv[256 * i + 128 * h + 32 * k + l];
              isum += b.scales[8 * h + 2 * k + half] * s;
            }
        sum += fp16(b.d) * q8_256_scales(x, cols)[i] * float(isum);
      }
      out[t] = sum;
    }
#endif
  }
};

}  // namespace

extern const CpuOps ops_Q6_K = {gemv<Dot>, decode};

#if defined(SINKSERVE_QUANT_REFERENCE)
void dequantize_Q6_K(const void* src, float* dst, int64_t n) { dequantize(src, dst, n); }

// Per group of 16: the best scale for codes -32..31; the 16 scales then rounded to int8 against
// the one of largest magnitude (which takes -128), and the codes refitted.
void quantize_Q6_K(const float* src, void* dst, int64_t n) {
  auto* blocks = static_cast<BlockQ6_K*>(dst);
  for (int64_t i = 0; i < n / 256; ++i) {
    const float* x = src + 256 * i;
    BlockQ6_K& b = blocks[i];
    float w[256], s[16];
    int q[256];
    magnitude_weights(x, 256, w);
    float smax = 0;
    for (int g = 0; g < 16; ++g) {
      s[g] = fit_scale(x + 16 * g, w + 16 * g, 16, -32, 31, q + 16 * g);
      if (std::fabs(s[g]) > std::fabs(smax)) smax = s[g];
    }
    b.d = f32_to_f16(smax / -128.0f);
    const float d = f16_to_f32(b.d);
    for (int g = 0; g < 16; ++g) {
      b.scales[g] = int8_t(d != 0 ? round_clamp(s[g] / d, -128, 127) : 0);
      const float dg = d * float(b.scales[g]);
      for (int l = 0; l < 16; ++l) q[16 * g + l] = (dg != 0 ? round_clamp(x[16 * g + l] / dg, -32, 31) : 0) + 32;
    }
    for (int h = 0; h < 2; ++h)
      for (int l = 0; l < 32; ++l) {
        const int* c = q + 128 * h + l;
        b.ql[64 * h + l] = uint8_t((c[0] & 15) | ((c[64] & 15) << 4));
        b.ql[64 * h + 32 + l] = uint8_t((c[32] & 15) | ((c[96] & 15) << 4));
        b.qh[32 * h + l] = uint8_t((c[0] >> 4) | ((c[32] >> 4) << 2) | ((c[64] >> 4) << 4) | ((c[96] >> 4) << 6));
      }
  }
}
#endif

}  // namespace sinkserve::quants::SINKSERVE_QUANT_ISA
