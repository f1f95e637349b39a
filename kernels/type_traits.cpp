#include "kernels/type_traits.h"

#include <cstring>
#include <stdexcept>

#include "kernels/quants/act_layout.h"

namespace sinkserve {
namespace {

void dequantize_F32(const void* src, float* dst, int64_t n) { std::memcpy(dst, src, size_t(n) * 4); }
void quantize_F32(const float* src, void* dst, int64_t n) { std::memcpy(dst, src, size_t(n) * 4); }
void dequantize_F16(const void* src, float* dst, int64_t n) {
  const auto* s = static_cast<const uint16_t*>(src);
  for (int64_t i = 0; i < n; ++i) dst[i] = f16_to_f32(s[i]);
}
void quantize_F16(const float* src, void* dst, int64_t n) {
  auto* d = static_cast<uint16_t*>(dst);
  for (int64_t i = 0; i < n; ++i) d[i] = f32_to_f16(src[i]);
}
void dequantize_BF16(const void* src, float* dst, int64_t n) {
  const auto* s = static_cast<const uint16_t*>(src);
  for (int64_t i = 0; i < n; ++i) dst[i] = bf16_to_f32(s[i]);
}
void quantize_BF16(const float* src, void* dst, int64_t n) {
  auto* d = static_cast<uint16_t*>(dst);
  for (int64_t i = 0; i < n; ++i) d[i] = f32_to_bf16(src[i]);
}

#if defined(__x86_64__)
#define SINKSERVE_SIMD_OPS(NAME) &quants::avx2::ops_##NAME, &quants::avx512::ops_##NAME
#else
#define SINKSERVE_SIMD_OPS(NAME) nullptr, nullptr
#endif

#define SINKSERVE_FLOAT_ROW(NAME, BV, BB, GGML, ACT, FTYPE)                                      \
  {DType::NAME, #NAME, BV, BB, GGML, FTYPE, ActFormat::ACT, dequantize_##NAME, quantize_##NAME, \
   {nullptr, nullptr, nullptr}},
#define SINKSERVE_QUANT_ROW(NAME, BV, BB, GGML, ACT, FTYPE)                                      \
  {DType::NAME, #NAME, BV, BB, GGML, FTYPE, ActFormat::ACT, quants::scalar::dequantize_##NAME,  \
   quants::scalar::quantize_##NAME, {&quants::scalar::ops_##NAME, SINKSERVE_SIMD_OPS(NAME)}},

const TypeTraits kTraits[] = {SINKSERVE_FLOAT_TYPES(SINKSERVE_FLOAT_ROW) SINKSERVE_QUANT_TYPES(SINKSERVE_QUANT_ROW)};

#define SINKSERVE_CHECK_BLOCK(NAME, BV, BB, ...) \
  static_assert(sizeof(Block##NAME) == BB, "type_list.h and blocks.h disagree on " #NAME);
SINKSERVE_QUANT_TYPES(SINKSERVE_CHECK_BLOCK)

}  // namespace

const TypeTraits& type_traits(DType t) {
  // type_list.h generates both the enumeration and the rows, so row i is enumerator i.
  if (size_t(t) >= std::size(kTraits)) throw std::invalid_argument("unknown weight type " + std::to_string(int(t)));
  return kTraits[size_t(t)];
}

std::span<const TypeTraits> all_type_traits() { return kTraits; }

std::optional<DType> dtype_from_ggml(uint32_t ggml_type) {
  for (const TypeTraits& t : kTraits)
    if (t.ggml_type == ggml_type) return t.type;
  return std::nullopt;
}

std::optional<DType> dtype_from_name(std::string_view name) {
  for (const TypeTraits& t : kTraits)
    if (t.name == name) return t.type;
  return std::nullopt;
}

bool dtype_is_quantized(DType t) { return type_traits(t).act != ActFormat::F32; }

int64_t act_row_bytes(ActFormat f, int64_t n) {
  switch (f) {
    case ActFormat::F32: return 4 * n;
    case ActFormat::Q8_32: return quants::q8_32_row_bytes(n);
    case ActFormat::Q8_256: return quants::q8_256_row_bytes(n);
  }
  return 0;
}

}  // namespace sinkserve
