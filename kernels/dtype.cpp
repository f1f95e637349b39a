#include "kernels/dtype.h"

#include <cmath>
#include <cstring>

#include "kernels/type_traits.h"

namespace sinkserve {

std::string_view dtype_name(DType t) { return type_traits(t).name; }
int64_t dtype_block_values(DType t) { return type_traits(t).block_values; }
int64_t dtype_block_bytes(DType t) { return type_traits(t).block_bytes; }
int64_t dtype_row_bytes(DType t, int64_t n) { return n / dtype_block_values(t) * dtype_block_bytes(t); }

float f16_to_f32(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000) << 16;
  uint32_t exp = (h >> 10) & 0x1f;
  uint32_t mant = h & 0x3ff;
  uint32_t bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {  // subnormal: renormalise
      exp = 127 - 15 + 1;
      while (!(mant & 0x400)) { mant <<= 1; --exp; }
      bits = sign | (exp << 23) | ((mant & 0x3ff) << 13);
    }
  } else if (exp == 31) {
    bits = sign | 0x7f800000u | (mant << 13);
  } else {
    bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

uint16_t f32_to_f16(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  const uint16_t sign = uint16_t((x >> 16) & 0x8000);
  const uint32_t absx = x & 0x7fffffff;
  if (absx >= 0x7f800000) return sign | 0x7c00 | (absx > 0x7f800000 ? 0x200 : 0);
  if (absx >= 0x477ff000) return sign | 0x7c00;  // overflows to inf after rounding
  if (absx < 0x38800000) {  // subnormal or zero in half precision
    const float a = std::fabs(f);
    return sign | uint16_t(std::nearbyint(a * 16777216.0f));  // a / 2^-24, ties to even
  }
  const uint32_t mant_rounded = absx + 0xfff + ((absx >> 13) & 1);
  return sign | uint16_t((mant_rounded - (112u << 23)) >> 13);
}

float bf16_to_f32(uint16_t h) {
  const uint32_t bits = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

uint16_t f32_to_bf16(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  if ((x & 0x7fffffff) > 0x7f800000) return uint16_t((x >> 16) | 0x40);  // quiet NaN
  return uint16_t((x + 0x7fff + ((x >> 16) & 1)) >> 16);
}

void dequantize_row(DType t, const void* src, float* dst, int64_t n) { type_traits(t).dequantize(src, dst, n); }

void quantize_row(DType t, const float* src, void* dst, int64_t n) { type_traits(t).quantize(src, dst, n); }

}  // namespace sinkserve
