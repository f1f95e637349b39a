// IQ4_NL and IQ4_XS: 4-bit codes indexing a fixed non-uniform grid of 16 int8 values (denser near
// zero, where weights are), with one F16 scale per 32 values (IQ4_NL) or an F16 scale per 256
// and 6-bit signed scales per 32 (IQ4_XS). The dot products look the grid up with vpshufb and
// multiply signed by signed bytes; IQ4_NL meets Q8_32 activations, IQ4_XS Q8_256.
#include "kernels/quants/family.h"

#if defined(SINKSERVE_QUANT_REFERENCE)
#include <cmath>

#include "kernels/quants/fit.h"
#endif

namespace sinkserve::quants::SINKSERVE_QUANT_ISA {
namespace {

constexpr int8_t kGrid[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};

// Scale (6 bits, before the -32) of group g of an IQ4_XS block.
inline int xs_scale(const BlockIQ4_XS& b, int g) {
  return ((b.scales_l[g / 2] >> (4 * (g % 2))) & 15) | (((b.scales_h >> (2 * g)) & 3) << 4);
}

// 32 values of the Q4_0 nibble layout: low nibbles, then high nibbles.
inline void decode32(const uint8_t* qs, float d, float* y) {
  for (int j = 0; j < 16; ++j) {
    y[j] = d * float(kGrid[qs[j] & 15]);
    y[j + 16] = d * float(kGrid[qs[j] >> 4]);
  }
}

#if !defined(__AVX2__)  // the reference; SIMD builds decode in registers
void dequantize_nl(const void* src, float* dst, int64_t n) {
  const auto* b = static_cast<const BlockIQ4_NL*>(src);
  for (int64_t i = 0; i < n / 32; ++i) decode32(b[i].qs, fp16(b[i].d), dst + 32 * i);
}
#endif

#if !defined(__AVX2__)  // the reference; SIMD builds decode in registers
void dequantize_xs(const void* src, float* dst, int64_t n) {
  const auto* blocks = static_cast<const BlockIQ4_XS*>(src);
  for (int64_t i = 0; i < n / 256; ++i) {
    const float d = fp16(blocks[i].d);
    for (int g = 0; g < 8; ++g)
      decode32(blocks[i].qs + 16 * g, d * float(xs_scale(blocks[i], g) - 32), dst + 256 * i + 32 * g);
  }
}
#endif

// Sum over 32 values of grid[code] * x.
inline int32_t dot32(const uint8_t* qs, const int8_t* x) {
  int32_t s = 0;
  for (int j = 0; j < 16; ++j) s += kGrid[qs[j] & 15] * x[j] + kGrid[qs[j] >> 4] * x[j + 16];
  return s;
}

#if defined(__AVX2__)
inline __m256i grid_values(const uint8_t* qs) {
  const __m256i grid = _mm256_broadcastsi128_si256(load128(kGrid));
  return _mm256_shuffle_epi8(grid, nibbles(qs));
}
#endif

void decode_nl(const void* src, float* dst, int64_t n) {
#if defined(__AVX2__)
  const auto* b = static_cast<const BlockIQ4_NL*>(src);
  for (int64_t i = 0; i < n / 32; ++i) store32<true>(grid_values(b[i].qs), fp16(b[i].d), 0.0f, dst + 32 * i);
#else
  dequantize_nl(src, dst, n);
#endif
}

void decode_xs(const void* src, float* dst, int64_t n) {
#if defined(__AVX2__)
  const auto* blocks = static_cast<const BlockIQ4_XS*>(src);
  for (int64_t i = 0; i < n / 256; ++i) {
    const float d = fp16(blocks[i].d);
    for (int g = 0; g < 8; ++g)
      store32<true>(grid_values(blocks[i].qs + 16 * g), d * float(xs_scale(blocks[i], g) - 32), 0.0f, dst + 256 * i + 32 * g);
  }
#else
  dequantize_xs(src, dst, n);
#endif
}

struct CodesNl {
  using Block = BlockIQ4_NL;
  static constexpr bool kSigned = true, kOffset = false;
#if defined(__AVX2__)
  static __m256i codes(const Block& b) { return grid_values(b.qs); }
#else
  static int code(const Block& b, int j) { return kGrid[j < 16 ? b.qs[j] & 15 : b.qs[j - 16] >> 4]; }
#endif
};
using DotNl = Dot32<CodesNl>;

struct DotXs {
  template <int NT>
  static void run(const uint8_t* row, const uint8_t* xq, size_t xs, int64_t cols, float* out) {
    const auto* blocks = reinterpret_cast<const BlockIQ4_XS*>(row);
    const int64_t nb = cols / 256;
#if defined(__AVX2__)
    __m256 acc[NT];
    for (int t = 0; t < NT; ++t) acc[t] = _mm256_setzero_ps();
    for (int64_t i = 0; i < nb; ++i) {
      const BlockIQ4_XS& b = blocks[i];
      __m256i isum[NT];
      for (int t = 0; t < NT; ++t) isum[t] = _mm256_setzero_si256();
#pragma GCC unroll 8
      for (int g = 0; g < 8; ++g) {
        const __m256i w = grid_values(b.qs + 16 * g);
        const __m256i aw = _mm256_sign_epi8(w, w);
        const __m256i s = _mm256_set1_epi16(int16_t(xs_scale(b, g) - 32));
#pragma GCC unroll 4
        for (int t = 0; t < NT; ++t) {
          const __m256i x = load256(xq + t * xs + 256 * i + 32 * g);
          isum[t] = _mm256_add_epi32(isum[t], dot_us_scaled(aw, _mm256_sign_epi8(x, w), s));
        }
      }
      const float d = fp16(b.d);
#pragma GCC unroll 4
      for (int t = 0; t < NT; ++t)
        acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[t]), _mm256_set1_ps(d * q8_256_scales(xq + t * xs, cols)[i]), acc[t]);
    }
    for (int t = 0; t < NT; ++t) out[t] = hsum(acc[t]);
#else
    for (int t = 0; t < NT; ++t) {
      const uint8_t* x = xq + t * xs;
      float sum = 0;
      for (int64_t i = 0; i < nb; ++i) {
        int32_t isum = 0;
        for (int g = 0; g < 8; ++g)
          isum += (xs_scale(blocks[i], g) - 32) * dot32(blocks[i].qs + 16 * g, reinterpret_cast<const int8_t*>(x) + 256 * i + 32 * g);
        sum += fp16(blocks[i].d) * q8_256_scales(x, cols)[i] * float(isum);
      }
      out[t] = sum;
    }
#endif
  }
};

}  // namespace

extern const CpuOps ops_IQ4_NL = {gemv<DotNl>, decode_nl};
extern const CpuOps ops_IQ4_XS = {gemv<DotXs>, decode_xs};

#if defined(SINKSERVE_QUANT_REFERENCE)
void dequantize_IQ4_NL(const void* src, float* dst, int64_t n) { dequantize_nl(src, dst, n); }
void dequantize_IQ4_XS(const void* src, float* dst, int64_t n) { dequantize_xs(src, dst, n); }

namespace {
// Codes of 32 values for scale d, in the nibble layout.
void pack32(const float* x, float d, uint8_t* qs) {
  const float id = d != 0 && std::isfinite(d) ? 1.0f / d : 0.0f;
  for (int j = 0; j < 16; ++j)
    qs[j] = uint8_t(nearest_in_table(kGrid, x[j] * id) | (nearest_in_table(kGrid, x[j + 16] * id) << 4));
}
}  // namespace

void quantize_IQ4_NL(const float* src, void* dst, int64_t n) {
  auto* b = static_cast<BlockIQ4_NL*>(dst);
  float w[32];
  int q[32];
  for (int64_t i = 0; i < n / 32; ++i) {
    magnitude_weights(src + 32 * i, 32, w);
    b[i].d = f32_to_f16(fit_scale_table(src + 32 * i, w, 32, kGrid, q));
    pack32(src + 32 * i, f16_to_f32(b[i].d), b[i].qs);
  }
}

// Per group the IQ4_NL scale, then the 8 scales rounded to 6 signed bits against the one of
// largest magnitude (which takes -32), and the codes refitted.
void quantize_IQ4_XS(const float* src, void* dst, int64_t n) {
  auto* blocks = static_cast<BlockIQ4_XS*>(dst);
  for (int64_t i = 0; i < n / 256; ++i) {
    const float* x = src + 256 * i;
    BlockIQ4_XS& b = blocks[i];
    float w[256], s[8];
    int q[32];
    magnitude_weights(x, 256, w);
    float smax = 0;
    for (int g = 0; g < 8; ++g) {
      s[g] = fit_scale_table(x + 32 * g, w + 32 * g, 32, kGrid, q);
      if (std::fabs(s[g]) > std::fabs(smax)) smax = s[g];
    }
    b.d = f32_to_f16(smax / -32.0f);
    const float d = f16_to_f32(b.d);
    b.scales_h = 0;
    std::memset(b.scales_l, 0, sizeof b.scales_l);
    for (int g = 0; g < 8; ++g) {
      const int v = d != 0 ? round_clamp(s[g] / d, -32, 31) : 0;
      const int u = v + 32;
      b.scales_l[g / 2] |= uint8_t((u & 15) << (4 * (g % 2)));
      b.scales_h |= uint16_t((u >> 4) << (2 * g));
      pack32(x + 32 * g, d * float(v), b.qs + 16 * g);
    }
  }
}
#endif

}  // namespace sinkserve::quants::SINKSERVE_QUANT_ISA
