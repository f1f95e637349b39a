// Q8_0: 32 int8 values and an F16 scale per block. Dot product against Q8_32 activations: one
// signed 8-bit dot per block (vpdpbusd / vpmaddubsw on |w| and x with w's sign), scaled in F32.
#include "kernels/quants/family.h"

#if defined(SINKSERVE_QUANT_REFERENCE)
#include <cmath>

#include "kernels/quants/fit.h"
#endif

namespace sinkserve::quants::SINKSERVE_QUANT_ISA {
namespace {

#if !defined(__AVX2__)  // the reference; SIMD builds decode in registers
void dequantize(const void* src, float* dst, int64_t n) {
  const auto* b = static_cast<const BlockQ8_0*>(src);
  for (int64_t i = 0; i < n / 32; ++i) {
    const float d = fp16(b[i].d);
    for (int j = 0; j < 32; ++j) dst[32 * i + j] = d * float(b[i].qs[j]);
  }
}
#endif

// The GEMM's panels: the same values, 32 per register.
void decode(const void* src, float* dst, int64_t n) {
#if defined(__AVX2__)
  const auto* b = static_cast<const BlockQ8_0*>(src);
  for (int64_t i = 0; i < n / 32; ++i) store32<true>(load256(b[i].qs), fp16(b[i].d), 0.0f, dst + 32 * i);
#else
  dequantize(src, dst, n);
#endif
}

struct Codes {
  using Block = BlockQ8_0;
  static constexpr bool kSigned = true, kOffset = false;
#if defined(__AVX2__)
  static __m256i codes(const Block& b) { return load256(b.qs); }
#else
  static int code(const Block& b, int j) { return b.qs[j]; }
#endif
};
using Dot = Dot32<Codes>;

}  // namespace

extern const CpuOps ops_Q8_0 = {gemv<Dot>, decode};

#if defined(SINKSERVE_QUANT_REFERENCE)
void dequantize_Q8_0(const void* src, float* dst, int64_t n) { dequantize(src, dst, n); }

void quantize_Q8_0(const float* src, void* dst, int64_t n) {
  auto* b = static_cast<BlockQ8_0*>(dst);
  for (int64_t i = 0; i < n / 32; ++i) {
    const float* x = src + 32 * i;
    float amax = 0;
    for (int j = 0; j < 32; ++j) amax = std::fmax(amax, std::fabs(x[j]));
    b[i].d = f32_to_f16(amax / 127.0f);
    const float d = f16_to_f32(b[i].d);
    const float id = d > 0 && std::isfinite(d) ? 1.0f / d : 0.0f;
    for (int j = 0; j < 32; ++j) b[i].qs[j] = int8_t(round_clamp(x[j] * id, -127, 127));
  }
}
#endif

}  // namespace sinkserve::quants::SINKSERVE_QUANT_ISA
