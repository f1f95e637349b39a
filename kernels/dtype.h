// Element types of weight matrices, with the exact storage layouts of the GGUF spec. The list of
// types is kernels/quants/type_list.h; everything else about a type is in its row of the
// type-traits table (kernels/type_traits.h), which the functions below read.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "kernels/quants/blocks.h"
#include "kernels/quants/type_list.h"

namespace sinkserve {

#define SINKSERVE_DTYPE_ENUMERATOR(NAME, ...) NAME,
enum class DType : uint8_t { SINKSERVE_ALL_TYPES(SINKSERVE_DTYPE_ENUMERATOR) };
#undef SINKSERVE_DTYPE_ENUMERATOR

std::string_view dtype_name(DType t);
// Values per storage block (1 for plain floats, 32 for Q8_0, 256 for the K-quants) and bytes per
// block.
int64_t dtype_block_values(DType t);
int64_t dtype_block_bytes(DType t);
// Bytes of a row of n values; n must be a multiple of dtype_block_values(t).
int64_t dtype_row_bytes(DType t, int64_t n);

float f16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f);  // round to nearest even
float bf16_to_f32(uint16_t h);
uint16_t f32_to_bf16(float f);  // round to nearest even

// Converts one row of n values (a multiple of the block size) to F32.
void dequantize_row(DType t, const void* src, float* dst, int64_t n);
// Converts n F32 values (a multiple of the block size) into type t.
void quantize_row(DType t, const float* src, void* dst, int64_t n);

}  // namespace sinkserve
