// Q4_K and Q5_K: super-blocks of 256 values in 8 groups of 32, each group with a 6-bit scale and
// minimum (k_scales.h), 4-bit codes (Q5_K: plus a fifth bit from qh). Dot products against Q8_256
// activations: each 32-value group's code x quant products are summed in int16 pairs and weighted
// by the group's scale in one vpmaddwd; the minimums meet the activations' 16-value sums.
#include "kernels/quants/family.h"
#include "kernels/quants/k_scales.h"

#if defined(SINKSERVE_QUANT_REFERENCE)
#include <cmath>

#include "kernels/quants/fit.h"
#endif

namespace sinkserve::quants::SINKSERVE_QUANT_ISA {
namespace {

template <class B>
constexpr bool kFifthBit = sizeof(B) == sizeof(BlockQ5_K);

template <class B>
void unpack_scales(const B& b, uint8_t* sc, uint8_t* mn) {
  uint32_t s[2], m[2];
  unpack_k4_scales(b.scales, s, m);
  std::memcpy(sc, s, 8);
  std::memcpy(mn, m, 8);
}

#if !defined(__AVX2__)  // the reference; SIMD builds decode in registers
template <class B>
void dequantize(const void* src, float* dst, int64_t n) {
  const auto* blocks = static_cast<const B*>(src);
  for (int64_t i = 0; i < n / 256; ++i) {
    const B& b = blocks[i];
    uint8_t sc[8], mn[8];
    unpack_scales(b, sc, mn);
    const float d = fp16(b.d), dmin = fp16(b.dmin);
    float* y = dst + 256 * i;
    for (int c = 0; c < 4; ++c) {
      const float d1 = d * float(sc[2 * c]), m1 = dmin * float(mn[2 * c]);
      const float d2 = d * float(sc[2 * c + 1]), m2 = dmin * float(mn[2 * c + 1]);
      for (int l = 0; l < 32; ++l) {
        int lo = b.qs[32 * c + l] & 15, hi = b.qs[32 * c + l] >> 4;
        if constexpr (kFifthBit<B>) {
          lo += ((b.qh[l] >> (2 * c)) & 1) << 4;
          hi += ((b.qh[l] >> (2 * c + 1)) & 1) << 4;
        }
        y[64 * c + l] = d1 * float(lo) - m1;
        y[64 * c + 32 + l] = d2 * float(hi) - m2;
      }
    }
  }
}
#endif

template <class B>
void decode(const void* src, float* dst, int64_t n) {
#if defined(__AVX2__)
  const auto* blocks = static_cast<const B*>(src);
  const __m256i low4 = _mm256_set1_epi8(0x0f), bit4 = _mm256_set1_epi8(0x10);
  for (int64_t i = 0; i < n / 256; ++i) {
    const B& b = blocks[i];
    uint8_t sc[8], mn[8];
    unpack_scales(b, sc, mn);
    const float d = fp16(b.d), dmin = fp16(b.dmin);
    __m256i hb = _mm256_setzero_si256();
    if constexpr (kFifthBit<B>) hb = load256(b.qh);
    for (int c = 0; c < 4; ++c) {
      const __m256i q = load256(b.qs + 32 * c);
      __m256i wl = _mm256_and_si256(q, low4), wh = _mm256_and_si256(_mm256_srli_epi16(q, 4), low4);
      if constexpr (kFifthBit<B>) {
        wl = _mm256_or_si256(wl, _mm256_and_si256(_mm256_slli_epi16(hb, 4), bit4));
        wh = _mm256_or_si256(wh, _mm256_and_si256(_mm256_slli_epi16(hb, 3), bit4));
        hb = _mm256_srli_epi16(hb, 2);
      }
      float* y = dst + 256 * i + 64 * c;
      store32<false>(wl, d * float(sc[2 * c]), -(dmin * float(mn[2 * c])), y);
      store32<false>(wh, d * float(sc[2 * c + 1]), -(dmin * float(mn[2 * c + 1])), y + 32);
    }
  }
#else
  dequantize<B>(src, dst, n);
#endif
}

template <class B>
struct Dot {
  template <int NT>
  static void run(const uint8_t* row, const uint8_t* xq, size_t xs, int64_t cols, float* out) {
    const auto* blocks = reinterpret_cast<const B*>(row);
    const int64_t nb = cols / 256;
#if defined(__AVX2__)
    // Products and minimums in separate F32 accumulators, so neither waits on the other.
    __m256 acc[NT], mins_acc[NT];
    for (int t = 0; t < NT; ++t) acc[t] = mins_acc[t] = _mm256_setzero_ps();
    const __m256i low4 = _mm256_set1_epi8(0x0f), bit4 = _mm256_set1_epi8(0x10);
    for (int64_t i = 0; i < nb; ++i) {
      const B& b = blocks[i];
      uint32_t scw[2], mnw[2];
      unpack_k4_scales(b.scales, scw, mnw);
      alignas(16) int16_t sc[8];
      _mm_store_si128(reinterpret_cast<__m128i*>(sc),
                      _mm_cvtepu8_epi16(_mm_cvtsi64_si128(int64_t(scw[0] | uint64_t(scw[1]) << 32))));
      const __m128i mn8 = _mm_cvtsi64_si128(int64_t(mnw[0] | uint64_t(mnw[1]) << 32));
      // Each minimum twice, to meet the two 16-value sums of its group.
      const __m256i mins = _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(mn8, mn8));
      __m256i isum[NT];
      for (int t = 0; t < NT; ++t) isum[t] = _mm256_setzero_si256();
      __m256i hb = _mm256_setzero_si256();
      if constexpr (kFifthBit<B>) hb = load256(b.qh);
#pragma GCC unroll 4
      for (int c = 0; c < 4; ++c) {
        const __m256i q = load256(b.qs + 32 * c);
        __m256i wl = _mm256_and_si256(q, low4), wh = _mm256_and_si256(_mm256_srli_epi16(q, 4), low4);
        if constexpr (kFifthBit<B>) {
          // Bits 2c and 2c+1 of qh, consumed from the bottom two bits as hb shifts down.
          wl = _mm256_or_si256(wl, _mm256_and_si256(_mm256_slli_epi16(hb, 4), bit4));
          wh = _mm256_or_si256(wh, _mm256_and_si256(_mm256_slli_epi16(hb, 3), bit4));
          hb = _mm256_srli_epi16(hb, 2);
        }
        const __m256i sl = _mm256_set1_epi16(sc[2 * c]), sh = _mm256_set1_epi16(sc[2 * c + 1]);
#pragma GCC unroll 4
        for (int t = 0; t < NT; ++t) {
          const uint8_t* x = xq + t * xs + 256 * i + 64 * c;
          isum[t] = _mm256_add_epi32(isum[t], _mm256_add_epi32(dot_us_scaled(wl, load256(x), sl),
                                                               dot_us_scaled(wh, load256(x + 32), sh)));
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
        const B& b = blocks[i];
        uint8_t sc[8], mn[8];
        unpack_scales(b, sc, mn);
        int32_t isum = 0, msum = 0;
        for (int c = 0; c < 4; ++c) {
          int32_t s_lo = 0, s_hi = 0;
          for (int l = 0; l < 32; ++l) {
            int lo = b.qs[32 * c + l] & 15, hi = b.qs[32 * c + l] >> 4;
            if constexpr (kFifthBit<B>) {
              lo += ((b.qh[l] >> (2 * c)) & 1) << 4;
              hi += ((b.qh[l] >> (2 * c + 1)) & 1) << 4;
            }
            s_lo += lo * xv[256 * i + 64 * c + l];
            s_hi += hi * xv[256 * i + 64 * c + 32 + l];
          }
          isum += sc[2 * c] * s_lo + sc[2 * c + 1] * s_hi;
        }
        for (int g = 0; g < 8; ++g) msum += mn[g] * (bs[16 * i + 2 * g] + bs[16 * i + 2 * g + 1]);
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

extern const CpuOps ops_Q4_K = {gemv<Dot<BlockQ4_K>>, decode<BlockQ4_K>};
extern const CpuOps ops_Q5_K = {gemv<Dot<BlockQ5_K>>, decode<BlockQ5_K>};

#if defined(SINKSERVE_QUANT_REFERENCE)
void dequantize_Q4_K(const void* src, float* dst, int64_t n) { dequantize<BlockQ4_K>(src, dst, n); }
void dequantize_Q5_K(const void* src, float* dst, int64_t n) { dequantize<BlockQ5_K>(src, dst, n); }

namespace {

// Per group: the best scale and minimum (x ~ s q - m, m >= 0); then both sets rounded to 6 bits
// against the super-block's largest, and the codes refitted to the rounded values.
template <class B>
void quantize(const float* src, void* dst, int64_t n) {
  constexpr int qmax = kFifthBit<B> ? 31 : 15;
  auto* blocks = static_cast<B*>(dst);
  for (int64_t i = 0; i < n / 256; ++i) {
    const float* x = src + 256 * i;
    B& b = blocks[i];
    float w[256], s[8], m[8];
    int q[256];
    magnitude_weights(x, 256, w);
    float smax = 0, mmax = 0;
    for (int g = 0; g < 8; ++g) {
      float off;
      fit_scale_offset(x + 32 * g, w + 32 * g, 32, qmax, true, &s[g], &off, q + 32 * g);
      m[g] = -off;
      smax = std::fmax(smax, s[g]);
      mmax = std::fmax(mmax, m[g]);
    }
    b.d = f32_to_f16(smax / 63.0f);
    b.dmin = f32_to_f16(mmax / 63.0f);
    const float d = f16_to_f32(b.d), dmin = f16_to_f32(b.dmin);
    uint8_t sc[8], mn[8];
    for (int g = 0; g < 8; ++g) {
      sc[g] = uint8_t(d > 0 ? round_clamp(s[g] / d, 0, 63) : 0);
      mn[g] = uint8_t(dmin > 0 ? round_clamp(m[g] / dmin, 0, 63) : 0);
      const float dg = d * float(sc[g]), mg = dmin * float(mn[g]);
      for (int l = 0; l < 32; ++l) q[32 * g + l] = dg > 0 ? round_clamp((x[32 * g + l] + mg) / dg, 0, qmax) : 0;
    }
    pack_k4_scales(sc, mn, b.scales);
    if constexpr (kFifthBit<B>) std::memset(b.qh, 0, sizeof b.qh);
    for (int c = 0; c < 4; ++c)
      for (int l = 0; l < 32; ++l) {
        const int lo = q[64 * c + l], hi = q[64 * c + 32 + l];
        b.qs[32 * c + l] = uint8_t((lo & 15) | ((hi & 15) << 4));
        if constexpr (kFifthBit<B>) b.qh[l] |= uint8_t(((lo >> 4) << (2 * c)) | ((hi >> 4) << (2 * c + 1)));
      }
  }
}

}  // namespace

void quantize_Q4_K(const float* src, void* dst, int64_t n) { quantize<BlockQ4_K>(src, dst, n); }
void quantize_Q5_K(const float* src, void* dst, int64_t n) { quantize<BlockQ5_K>(src, dst, n); }
#endif

}  // namespace sinkserve::quants::SINKSERVE_QUANT_ISA
