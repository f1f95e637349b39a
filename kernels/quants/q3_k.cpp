// Q3_K: Q2_K's 2-bit code arrangement plus a third bit per value from hmask, one 6-bit signed
// scale per 16-value group (no minimums): x = d * (s - 32) * (code - 4). Dot products against
// Q8_256 activations take the 3-bit codes unsigned (0..7) and apply the -4 through the
// activations' 16-value sums.
#include "kernels/quants/family.h"

#if defined(SINKSERVE_QUANT_REFERENCE)
#include <cmath>

#include "kernels/quants/fit.h"
#endif

namespace sinkserve::quants::SINKSERVE_QUANT_ISA {
namespace {

// The 16 6-bit scales (0..63, before the -32) as bytes, 4 per word: low nibbles from bytes 0-7
// (groups 0-7 low halves, groups 8-15 high halves), high 2 bits from bytes 8-11.
void unpack_scales(const uint8_t* p, uint32_t* w) {
  uint32_t a[3];
  std::memcpy(a, p, 12);
  w[0] = (a[0] & 0x0f0f0f0f) | ((a[2] & 0x03030303) << 4);
  w[1] = (a[1] & 0x0f0f0f0f) | (((a[2] >> 2) & 0x03030303) << 4);
  w[2] = ((a[0] >> 4) & 0x0f0f0f0f) | (((a[2] >> 4) & 0x03030303) << 4);
  w[3] = ((a[1] >> 4) & 0x0f0f0f0f) | (((a[2] >> 6) & 0x03030303) << 4);
}

// Code (0..7) of value 128 h + 32 j + l: the -4 applies where the hmask bit is clear.
inline int code(const BlockQ3_K& b, int h, int j, int l) {
  return ((b.qs[32 * h + l] >> (2 * j)) & 3) | (((b.hmask[l] >> (4 * h + j)) & 1) << 2);
}

#if !defined(__AVX2__)  // the reference; SIMD builds decode in registers
void dequantize(const void* src, float* dst, int64_t n) {
  const auto* blocks = static_cast<const BlockQ3_K*>(src);
  for (int64_t i = 0; i < n / 256; ++i) {
    const BlockQ3_K& b = blocks[i];
    uint32_t w[4];
    unpack_scales(b.scales, w);
    uint8_t sc[16];
    std::memcpy(sc, w, 16);
    const float d = fp16(b.d);
    for (int h = 0; h < 2; ++h)
      for (int j = 0; j < 4; ++j)
        for (int half = 0; half < 2; ++half) {
          const float dl = d * float(sc[8 * h + 2 * j + half] - 32);
          for (int l = 16 * half; l < 16 * half + 16; ++l)
            dst[256 * i + 128 * h + 32 * j + l] = dl * float(code(b, h, j, l) - 4);
        }
  }
}
#endif

void decode(const void* src, float* dst, int64_t n) {
#if defined(__AVX2__)
  const auto* blocks = static_cast<const BlockQ3_K*>(src);
  const __m256i two_bits = _mm256_set1_epi8(3), bit2 = _mm256_set1_epi8(4);
  for (int64_t i = 0; i < n / 256; ++i) {
    const BlockQ3_K& b = blocks[i];
    uint32_t words[4];
    unpack_scales(b.scales, words);
    uint8_t sc[16];
    std::memcpy(sc, words, 16);
    const float d = fp16(b.d);
    __m256i hm = load256(b.hmask);
    for (int h = 0; h < 2; ++h) {
      const __m256i q = load256(b.qs + 32 * h);
      for (int j = 0; j < 4; ++j) {
        const __m256i w = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(q, 2 * j), two_bits),
                                          _mm256_and_si256(_mm256_slli_epi16(hm, 2), bit2));
        hm = _mm256_srli_epi16(hm, 1);
        const float s0 = d * float(sc[8 * h + 2 * j] - 32), s1 = d * float(sc[8 * h + 2 * j + 1] - 32);
        float* y = dst + 256 * i + 128 * h + 32 * j;
        store16<false>(_mm256_castsi256_si128(w), s0, -4.0f * s0, y);
        store16<false>(_mm256_extracti128_si256(w, 1), s1, -4.0f * s1, y + 16);
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
    const auto* blocks = reinterpret_cast<const BlockQ3_K*>(row);
    const int64_t nb = cols / 256;
#if defined(__AVX2__)
    __m256 acc[NT];
    for (int t = 0; t < NT; ++t) acc[t] = _mm256_setzero_ps();
    const __m256i two_bits = _mm256_set1_epi8(3), bit2 = _mm256_set1_epi8(4);
    for (int64_t i = 0; i < nb; ++i) {
      const BlockQ3_K& b = blocks[i];
      uint32_t words[4];
      unpack_scales(b.scales, words);
      const __m128i sc8 = _mm_sub_epi8(load128(words), _mm_set1_epi8(32));
      // hmask bit 4h + j is read from bit 0 as hm shifts down one bit per step; the bits a 16-bit
      // shift carries in from the neighbour byte stay above bit 0 for all 8 steps.
      __m256i hm = load256(b.hmask);
      __m256i isum[NT];
      for (int t = 0; t < NT; ++t) isum[t] = _mm256_setzero_si256();
#pragma GCC unroll 2
      for (int h = 0; h < 2; ++h) {
        const __m256i q = load256(b.qs + 32 * h);
#pragma GCC unroll 4
        for (int j = 0; j < 4; ++j) {
          const __m256i w = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(q, 2 * j), two_bits),
                                            _mm256_and_si256(_mm256_slli_epi16(hm, 2), bit2));
          hm = _mm256_srli_epi16(hm, 1);
          const int64_t g = 8 * h + 2 * j;
          const __m256i s = _mm256_cvtepi8_epi16(_mm_shuffle_epi8(
              sc8, _mm_set_epi64x(int64_t(0x0101010101010101ull * uint64_t(g + 1)), int64_t(0x0101010101010101ull * uint64_t(g)))));
#pragma GCC unroll 4
          for (int t = 0; t < NT; ++t)
            isum[t] = _mm256_add_epi32(isum[t], dot_us_scaled(w, load256(xq + t * xs + 256 * i + 128 * h + 32 * j), s));
        }
      }
      const float d = fp16(b.d);
      const __m256i sc16 = _mm256_cvtepi8_epi16(sc8);
#pragma GCC unroll 4
      for (int t = 0; t < NT; ++t) {
        const uint8_t* x = xq + t * xs;
        const __m256i offset = _mm256_madd_epi16(load256(q8_256_sums(x, cols) + 16 * i), sc16);
        const __m256i s = _mm256_sub_epi32(isum[t], _mm256_slli_epi32(offset, 2));
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
        const BlockQ3_K& b = blocks[i];
        uint32_t words[4];
        unpack_scales(b.scales, words);
        uint8_t sc[16];
        std::memcpy(sc, words, 16);
        int32_t isum = 0;
        for (int h = 0; h < 2; ++h)
          for (int j = 0; j < 4; ++j)
            for (int half = 0; half < 2; ++half) {
              int32_t s = 0;
              for (int l = 16 * half; l < 16 * half + 16; ++l)
                s += (code(b, h, j, l) - 4) * xv[256 * i + 128 * h + 32 * j + l];
              isum += (sc[8 * h + 2 * j + half] - 32) * s;
            }
        sum += fp16(b.d) * q8_256_scales(x, cols)[i] * float(isum);
      }
      out[t] = sum;
    }
#endif
  }
};

}  // namespace

extern const CpuOps ops_Q3_K = {gemv<Dot>, decode};

#if defined(SINKSERVE_QUANT_REFERENCE)
void dequantize_Q3_K(const void* src, float* dst, int64_t n) { dequantize(src, dst, n); }

void quantize_Q3_K(const float* src, void* dst, int64_t n) {
  auto* blocks = static_cast<BlockQ3_K*>(dst);
  for (int64_t i = 0; i < n / 256; ++i) {
    const float* x = src + 256 * i;
    BlockQ3_K& b = blocks[i];
    float w[256], s[16];
    int q[256];
    magnitude_weights(x, 256, w);
    float smax = 0;
    for (int g = 0; g < 16; ++g) {
      s[g] = fit_scale(x + 16 * g, w + 16 * g, 16, -4, 3, q + 16 * g);
      if (std::fabs(s[g]) > std::fabs(smax)) smax = s[g];
    }
    b.d = f32_to_f16(smax / -32.0f);
    const float d = f16_to_f32(b.d);
    uint8_t sc[16];
    for (int g = 0; g < 16; ++g) {
      const int v = d != 0 ? round_clamp(s[g] / d, -32, 31) : 0;
      sc[g] = uint8_t(v + 32);
      const float dg = d * float(v);
      for (int l = 0; l < 16; ++l) q[16 * g + l] = (dg != 0 ? round_clamp(x[16 * g + l] / dg, -4, 3) : 0) + 4;
    }
    std::memset(b.scales, 0, sizeof b.scales);
    for (int g = 0; g < 16; ++g) {
      b.scales[g % 8] |= uint8_t((sc[g] & 15) << (4 * (g / 8)));
      b.scales[8 + g % 4] |= uint8_t((sc[g] >> 4) << (2 * (g / 4)));
    }
    std::memset(b.qs, 0, sizeof b.qs);
    std::memset(b.hmask, 0, sizeof b.hmask);
    for (int h = 0; h < 2; ++h)
      for (int j = 0; j < 4; ++j)
        for (int l = 0; l < 32; ++l) {
          const int c = q[128 * h + 32 * j + l];
          b.qs[32 * h + l] |= uint8_t((c & 3) << (2 * j));
          b.hmask[l] |= uint8_t((c >> 2) << (4 * h + j));
        }
  }
}
#endif

}  // namespace sinkserve::quants::SINKSERVE_QUANT_ISA
