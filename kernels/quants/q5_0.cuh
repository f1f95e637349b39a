// CUDA decoding of Q5_0 and Q5_1 (layouts and CPU variants: q5_0.cpp).
#pragma once
#include "kernels/quants/device.cuh"

namespace sinkserve::cuda {

// Codes of values j .. j + 7: nibble plus bit j + i of qh as the fifth bit.
__device__ __forceinline__ int q5_code(const uint8_t* qs, uint32_t qh, int j, int i) {
  return ((qs[(j & 15) + i] >> (j < 16 ? 0 : 4)) & 15) | int((qh >> (j + i)) & 1) << 4;
}

template <>
struct DeviceType<DType::Q5_0> {
  static constexpr int kValues = 32, kBytes = 22;
  __device__ static void decode8(const uint8_t* b, int j, float* o) {
    const float d = ld_half(b);
    const uint32_t qh = ld_u32(b + 2);
#pragma unroll
    for (int i = 0; i < 8; ++i) o[i] = d * float(q5_code(b + 6, qh, j, i) - 16);
  }
};

template <>
struct DeviceType<DType::Q5_1> {
  static constexpr int kValues = 32, kBytes = 24;
  __device__ static void decode8(const uint8_t* b, int j, float* o) {
    const float d = ld_half(b), m = ld_half(b + 2);
    const uint32_t qh = ld_u32(b + 4);
#pragma unroll
    for (int i = 0; i < 8; ++i) o[i] = d * float(q5_code(b + 8, qh, j, i)) + m;
  }
};

}  // namespace sinkserve::cuda
