// CUDA side of the weight-type families. DeviceType<T>::decode8(block, j, out) turns values
// j .. j + 7 (j a multiple of 8) of one storage block of type T into F32; the GEMV, the F16
// dequantization for cuBLAS and the embedding lookup of kernels/cuda/cuda_matmul.cu are written
// once against it. Each family's specialisation lives in <family>.cuh beside its CPU variants;
// device_types.cuh includes them all. Blocks are only 2-byte aligned (18, 22, 110, 210 bytes):
// codes are read bytewise, scales as halves.
#pragma once
#include <cuda_fp16.h>

#include <cstdint>

#include "kernels/dtype.h"

namespace sinkserve::cuda {

template <DType T>
struct DeviceType;

__device__ __forceinline__ float ld_half(const uint8_t* p) {
  return __half2float(*reinterpret_cast<const __half*>(p));
}

// 32 bits from a 2-byte aligned address.
__device__ __forceinline__ uint32_t ld_u32(const uint8_t* p) {
  const auto* h = reinterpret_cast<const uint16_t*>(p);
  return uint32_t(h[0]) | uint32_t(h[1]) << 16;
}

}  // namespace sinkserve::cuda
