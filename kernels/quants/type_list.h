// The weight types, one row each: the single list that the DType enumeration, the type-traits
// table (kernels/type_traits.cpp), the per-ISA kernel declarations and the CUDA dispatch are all
// generated from. Adding a block-quantized type = one family file under kernels/quants/ (defining
// dequantize_<NAME>, quantize_<NAME> and, per instruction set, ops_<NAME>; plus <family>.cuh for
// CUDA) and one row below.
//
// Columns: name, values per block, bytes per block, GGML type id, activation format of the CPU
// dot product (F32: float activations; Q8_32 / Q8_256: 8-bit activations, see act_layout.h),
// llama.cpp's general.file_type for a file of only this type (LLAMA_FTYPE_*). C++17: the CUDA
// sources include this too.
#pragma once

#define SINKSERVE_FLOAT_TYPES(X) \
  X(F32, 1, 4, 0, F32, 0)        \
  X(F16, 1, 2, 1, F32, 1)        \
  X(BF16, 1, 2, 30, F32, 32)

#define SINKSERVE_QUANT_TYPES(X)      \
  X(Q8_0, 32, 34, 8, Q8_32, 7)        \
  X(Q4_0, 32, 18, 2, Q8_32, 2)        \
  X(Q4_1, 32, 20, 3, Q8_32, 3)        \
  X(Q5_0, 32, 22, 6, Q8_32, 8)        \
  X(Q5_1, 32, 24, 7, Q8_32, 9)        \
  X(Q2_K, 256, 84, 10, Q8_256, 10)    \
  X(Q3_K, 256, 110, 11, Q8_256, 11)   \
  X(Q4_K, 256, 144, 12, Q8_256, 14)   \
  X(Q5_K, 256, 176, 13, Q8_256, 16)   \
  X(Q6_K, 256, 210, 14, Q8_256, 18)   \
  X(IQ4_NL, 32, 18, 20, Q8_32, 25)    \
  X(IQ4_XS, 256, 136, 23, Q8_256, 30)

#define SINKSERVE_ALL_TYPES(X) SINKSERVE_FLOAT_TYPES(X) SINKSERVE_QUANT_TYPES(X)
