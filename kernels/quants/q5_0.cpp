// Q5_0 and Q5_1: Q4_0 / Q4_1 with a fifth bit per value (bit j of the 32-bit qh for value j).
// The dot products widen the nibbles with those bits into unsigned bytes 0..31, then proceed as
// Q4_0 / Q4_1: -16 (Q5_0) or the minimum (Q5_1) applied through the activation block's sum.
#include "kernels/quants/family.h"

#if defined(SINKSERVE_QUANT_REFERENCE)
#include <cmath>

#include "kernels/quants/fit.h"
#endif

namespace sinkserve::quants::SINKSERVE_QUANT_ISA {
namespace {

template <class B>
constexpr bool kMin = sizeof(B) == sizeof(BlockQ5_1);

template <class B>
uint32_t high_bits(const B& b) {
  uint32_t h;
  std::memcpy(&h, b.qh, 4);
  return h;
}

#if !defined(__AVX2__)  // the reference; SIMD builds decode in registers
template <class B>
void dequantize(const void* src, float* dst, int64_t n) {
  const auto* blocks = static_cast<const B*>(src);
  for (int64_t i = 0; i < n / 32; ++i) {
    const B& b = blocks[i];
    const uint32_t h = high_bits(b);
    const float d = fp16(b.d);
    for (int j = 0; j < 16; ++j) {
      const int lo = (b.qs[j] & 15) | int(((h >> j) & 1) << 4);
      const int hi = (b.qs[j] >> 4) | int(((h >> (j + 16)) & 1) << 4);
      if constexpr (kMin<B>) {
        const float m = fp16(b.m);
        dst[32 * i + j] = d * float(lo) + m;
        dst[32 * i + 16 + j] = d * float(hi) + m;
      } else {
        dst[32 * i + j] = d * float(lo - 16);
        dst[32 * i + 16 + j] = d * float(hi - 16);
      }
    }
  }
}
#endif

// What each code's value adds besides d * code: -16 d (Q5_0) or m (Q5_1).
template <class B>
float block_offset(const B& b, float d) {
  if constexpr (kMin<B>) return fp16(b.m);
  else return -16.0f * d;
}

template <class B>
void decode(const void* src, float* dst, int64_t n) {
#if defined(__AVX2__)
  const auto* blocks = static_cast<const B*>(src);
  for (int64_t i = 0; i < n / 32; ++i) {
    const B& b = blocks[i];
    const float d = fp16(b.d);
    store32<false>(_mm256_or_si256(nibbles(b.qs), bits_to_bytes(high_bits(b), 0x10)), d, block_offset(b, d), dst + 32 * i);
  }
#else
  dequantize<B>(src, dst, n);
#endif
}

template <class B>
struct Codes {
  using Block = B;
  static constexpr bool kSigned = false, kOffset = true;
  static float offset(const B& b, float d) { return block_offset(b, d); }
#if defined(__AVX2__)
  static __m256i codes(const B& b) { return _mm256_or_si256(nibbles(b.qs), bits_to_bytes(high_bits(b), 0x10)); }
  static __m256 offsets(const B* b, __m256 d) {
    if constexpr (kMin<B>) return f16x8(&b->m, sizeof(B));
    else return _mm256_mul_ps(d, _mm256_set1_ps(-16.0f));
  }
#else
  static int code(const B& b, int j) {
    return (j < 16 ? b.qs[j] & 15 : b.qs[j - 16] >> 4) | int(((high_bits(b) >> j) & 1) << 4);
  }
#endif
};
template <class B>
using Dot = Dot32<Codes<B>>;

}  // namespace

extern const CpuOps ops_Q5_0 = {gemv<Dot<BlockQ5_0>>, decode<BlockQ5_0>};
extern const CpuOps ops_Q5_1 = {gemv<Dot<BlockQ5_1>>, decode<BlockQ5_1>};

#if defined(SINKSERVE_QUANT_REFERENCE)
void dequantize_Q5_0(const void* src, float* dst, int64_t n) { dequantize<BlockQ5_0>(src, dst, n); }
void dequantize_Q5_1(const void* src, float* dst, int64_t n) { dequantize<BlockQ5_1>(src, dst, n); }

namespace {
template <class B>
void pack(const int* q, B& b) {
  uint32_t h = 0;
  for (int j = 0; j < 16; ++j) {
    b.qs[j] = uint8_t((q[j] & 15) | ((q[16 + j] & 15) << 4));
    h |= uint32_t(q[j] >> 4) << j | uint32_t(q[16 + j] >> 4) << (j + 16);
  }
  std::memcpy(b.qh, &h, 4);
}
}  // namespace

void quantize_Q5_0(const float* src, void* dst, int64_t n) {
  auto* blocks = static_cast<BlockQ5_0*>(dst);
  float w[32];
  int q[32];
  for (int64_t i = 0; i < n / 32; ++i) {
    const float* x = src + 32 * i;
    magnitude_weights(x, 32, w);
    blocks[i].d = f32_to_f16(fit_scale(x, w, 32, -16, 15, q));
    const float d = f16_to_f32(blocks[i].d);
    const float id = d != 0 && std::isfinite(d) ? 1.0f / d : 0.0f;
    for (int j = 0; j < 32; ++j) q[j] = round_clamp(x[j] * id, -16, 15) + 16;
    pack(q, blocks[i]);
  }
}

void quantize_Q5_1(const float* src, void* dst, int64_t n) {
  auto* blocks = static_cast<BlockQ5_1*>(dst);
  float w[32];
  int q[32];
  for (int64_t i = 0; i < n / 32; ++i) {
    const float* x = src + 32 * i;
    magnitude_weights(x, 32, w);
    float s, m;
    fit_scale_offset(x, w, 32, 31, false, &s, &m, q);
    blocks[i].d = f32_to_f16(s);
    blocks[i].m = f32_to_f16(m);
    const float d = f16_to_f32(blocks[i].d), mr = f16_to_f32(blocks[i].m);
    const float id = d != 0 && std::isfinite(d) ? 1.0f / d : 0.0f;
    for (int j = 0; j < 32; ++j) q[j] = round_clamp((x[j] - mr) * id, 0, 31);
    pack(q, blocks[i]);
  }
}
#endif

}  // namespace sinkserve::quants::SINKSERVE_QUANT_ISA
