// Q4_0 and Q4_1: 32 4-bit codes per block, low nibbles first. The dot products take the codes as
// unsigned bytes (0..15) against the Q8_32 activations and apply Q4_0's -8 and Q4_1's minimum
// once per block through the activation block's sum.
#include "kernels/quants/family.h"

#if defined(SINKSERVE_QUANT_REFERENCE)
#include <cmath>

#include "kernels/quants/fit.h"
#endif

namespace sinkserve::quants::SINKSERVE_QUANT_ISA {
namespace {

#if !defined(__AVX2__)  // the reference; SIMD builds decode in registers
template <class B>
void dequantize(const void* src, float* dst, int64_t n) {
  const auto* b = static_cast<const B*>(src);
  for (int64_t i = 0; i < n / 32; ++i) {
    const float d = fp16(b[i].d);
    if constexpr (sizeof(B) == sizeof(BlockQ4_1)) {
      const float m = fp16(b[i].m);
      for (int j = 0; j < 16; ++j) {
        dst[32 * i + j] = d * float(b[i].qs[j] & 15) + m;
        dst[32 * i + 16 + j] = d * float(b[i].qs[j] >> 4) + m;
      }
    } else {
      for (int j = 0; j < 16; ++j) {
        dst[32 * i + j] = d * float((b[i].qs[j] & 15) - 8);
        dst[32 * i + 16 + j] = d * float((b[i].qs[j] >> 4) - 8);
      }
    }
  }
}
#endif

// What each code's value adds besides d * code: -8 d (Q4_0) or m (Q4_1).
template <class B>
float block_offset(const B& b, float d) {
  if constexpr (sizeof(B) == sizeof(BlockQ4_1)) return fp16(b.m);
  else return -8.0f * d;
}

template <class B>
void decode(const void* src, float* dst, int64_t n) {
#if defined(__AVX2__)
  const auto* b = static_cast<const B*>(src);
  for (int64_t i = 0; i < n / 32; ++i) {
    const float d = fp16(b[i].d);
    store32<false>(nibbles(b[i].qs), d, block_offset(b[i], d), dst + 32 * i);
  }
#else
  dequantize<B>(src, dst, n);
#endif
}

// Per block: d * dx * sum(code * xq) + offset * dx * sum(xq).
template <class B>
struct Codes {
  using Block = B;
  static constexpr bool kSigned = false, kOffset = true;
  static float offset(const B& b, float d) { return block_offset(b, d); }
#if defined(__AVX2__)
  static __m256i codes(const B& b) { return nibbles(b.qs); }
  static __m256 offsets(const B* b, __m256 d) {
    if constexpr (sizeof(B) == sizeof(BlockQ4_1)) return f16x8(&b->m, sizeof(B));
    else return _mm256_mul_ps(d, _mm256_set1_ps(-8.0f));
  }
#else
  static int code(const B& b, int j) { return j < 16 ? b.qs[j] & 15 : b.qs[j - 16] >> 4; }
#endif
};
template <class B>
using Dot = Dot32<Codes<B>>;

}  // namespace

extern const CpuOps ops_Q4_0 = {gemv<Dot<BlockQ4_0>>, decode<BlockQ4_0>};
extern const CpuOps ops_Q4_1 = {gemv<Dot<BlockQ4_1>>, decode<BlockQ4_1>};

#if defined(SINKSERVE_QUANT_REFERENCE)
void dequantize_Q4_0(const void* src, float* dst, int64_t n) { dequantize<BlockQ4_0>(src, dst, n); }
void dequantize_Q4_1(const void* src, float* dst, int64_t n) { dequantize<BlockQ4_1>(src, dst, n); }

namespace {
void pack_nibbles(const int* q, uint8_t* qs) {
  for (int j = 0; j < 16; ++j) qs[j] = uint8_t(q[j] | (q[16 + j] << 4));
}
}  // namespace

void quantize_Q4_0(const float* src, void* dst, int64_t n) {
  auto* b = static_cast<BlockQ4_0*>(dst);
  float w[32];
  int q[32];
  for (int64_t i = 0; i < n / 32; ++i) {
    const float* x = src + 32 * i;
    magnitude_weights(x, 32, w);
    b[i].d = f32_to_f16(fit_scale(x, w, 32, -8, 7, q));
    const float d = f16_to_f32(b[i].d);
    const float id = d != 0 && std::isfinite(d) ? 1.0f / d : 0.0f;
    for (int j = 0; j < 32; ++j) q[j] = round_clamp(x[j] * id, -8, 7) + 8;
    pack_nibbles(q, b[i].qs);
  }
}

void quantize_Q4_1(const float* src, void* dst, int64_t n) {
  auto* b = static_cast<BlockQ4_1*>(dst);
  float w[32];
  int q[32];
  for (int64_t i = 0; i < n / 32; ++i) {
    const float* x = src + 32 * i;
    magnitude_weights(x, 32, w);
    float s, m;
    fit_scale_offset(x, w, 32, 15, false, &s, &m, q);
    b[i].d = f32_to_f16(s);
    b[i].m = f32_to_f16(m);
    const float d = f16_to_f32(b[i].d), mr = f16_to_f32(b[i].m);
    const float id = d != 0 && std::isfinite(d) ? 1.0f / d : 0.0f;
    for (int j = 0; j < 32; ++j) q[j] = round_clamp((x[j] - mr) * id, 0, 15);
    pack_nibbles(q, b[i].qs);
  }
}
#endif

}  // namespace sinkserve::quants::SINKSERVE_QUANT_ISA
