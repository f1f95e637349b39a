// The type-traits table: everything the engine knows about a weight type, one row per type,
// generated from kernels/quants/type_list.h. dtype.h's functions (dtype_name, dtype_row_bytes,
// dequantize_row, ...) read it; the CPU matmul takes its per-ISA dot products from it.
#pragma once
#include <cstdint>
#include <optional>
#include <span>
#include <string_view>

#include "kernels/dtype.h"
#include "kernels/quants/cpu_ops.h"

namespace sinkserve {

// How a matmul hands the activations to a type's CPU dot products: as F32 rows (F32/F16/BF16
// weights), or quantized once per call into 8-bit rows (kernels/quants/act_layout.h).
enum class ActFormat : uint8_t { F32, Q8_32, Q8_256 };

struct TypeTraits {
  DType type;
  std::string_view name;
  int64_t block_values;  // values per storage block (1 for plain floats)
  int64_t block_bytes;
  uint32_t ggml_type;    // GGML tensor type id in GGUF files
  uint32_t file_type;    // llama.cpp's general.file_type of a file of only this type
  ActFormat act;
  // Reference conversions of n values (whole blocks); quantize is round-trip exact for F32 and
  // the nearest representable value for F16/BF16, a least-squares fit for block types.
  void (*dequantize)(const void* src, float* dst, int64_t n);
  void (*quantize)(const float* src, void* dst, int64_t n);
  // Integer dot products and dequantization per instruction set, indexed by cpu::Isa (scalar,
  // avx2, avx512); null for the float types and for ISAs not compiled in.
  const quants::CpuOps* cpu[3];
};

const TypeTraits& type_traits(DType t);
std::span<const TypeTraits> all_type_traits();  // in DType order
std::optional<DType> dtype_from_ggml(uint32_t ggml_type);
std::optional<DType> dtype_from_name(std::string_view name);
// Block-quantized (dot products on 8-bit activations) rather than a plain float type.
bool dtype_is_quantized(DType t);

// Bytes of one activation row of n values in format f (F32: 4n).
int64_t act_row_bytes(ActFormat f, int64_t n);

}  // namespace sinkserve
