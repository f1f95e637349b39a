// What each family file exports, once per instruction set: the family files under kernels/quants/
// are compiled three times (kernels/CMakeLists.txt), into namespaces scalar, avx2 and avx512, and
// kernels/type_traits.cpp picks among them at run time. Declarations only: nothing here may
// instantiate code, since it is included by translation units built with AVX-512 flags.
#pragma once
#include <cstddef>
#include <cstdint>

#include "kernels/quants/type_list.h"

namespace sinkserve::quants {

struct CpuOps {
  // y[t * ldy + r] = dot(row r of w, activation row t) for r in [r0, r1), t < n_tok <= 4. Row r
  // starts at w + r * row_bytes and holds cols values (whole blocks); activation row t starts at
  // xq + t * xq_stride, quantized in the type's activation format (act_layout.h).
  void (*gemv)(const void* w, size_t row_bytes, int64_t cols, int64_t r0, int64_t r1,
               const uint8_t* xq, size_t xq_stride, int n_tok, float* y, int64_t ldy);
  // n values (whole blocks) from the blocks at src to F32.
  void (*dequantize)(const void* src, float* dst, int64_t n);
};

// Quantizes n F32 values (a multiple of the format's block) into an activation row.
using ActQuantize = void (*)(const float* x, uint8_t* out, int64_t n);

#define SINKSERVE_DECLARE_CPU_OPS(NAME, ...) extern const CpuOps ops_##NAME;
#define SINKSERVE_DECLARE_ISA(ISA)                          \
  namespace ISA {                                           \
  SINKSERVE_QUANT_TYPES(SINKSERVE_DECLARE_CPU_OPS)          \
  void quantize_act_q8_32(const float* x, uint8_t* out, int64_t n);  \
  void quantize_act_q8_256(const float* x, uint8_t* out, int64_t n); \
  }
SINKSERVE_DECLARE_ISA(scalar)
#if defined(__x86_64__)
SINKSERVE_DECLARE_ISA(avx2)
SINKSERVE_DECLARE_ISA(avx512)
#endif
#undef SINKSERVE_DECLARE_ISA
#undef SINKSERVE_DECLARE_CPU_OPS

// The reference conversions, built once (scalar): the type-traits table's dequantize/quantize.
namespace scalar {
#define SINKSERVE_DECLARE_REFERENCE(NAME, ...)                        \
  void dequantize_##NAME(const void* src, float* dst, int64_t n); \
  void quantize_##NAME(const float* src, void* dst, int64_t n);
SINKSERVE_QUANT_TYPES(SINKSERVE_DECLARE_REFERENCE)
#undef SINKSERVE_DECLARE_REFERENCE
}  // namespace scalar

}  // namespace sinkserve::quants
