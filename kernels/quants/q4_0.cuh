// CUDA decoding of Q4_0 and Q4_1 (layouts and CPU variants: q4_0.cpp).
#pragma once
#include "kernels/quants/device.cuh"

namespace sinkserve::cuda {

template <>
struct DeviceType<DType::Q4_0> {
  static constexpr int kValues = 32, kBytes = 18;
  __device__ static void decode8(const uint8_t* b, int j, float* o) {
    const float d = ld_half(b);
    const uint8_t* qs = b + 2 + (j & 15);
    const int shift = j < 16 ? 0 : 4;
#pragma unroll
    for (int i = 0; i < 8; ++i) o[i] = d * float(((qs[i] >> shift) & 15) - 8);
  }
};

template <>
struct DeviceType<DType::Q4_1> {
  static constexpr int kValues = 32, kBytes = 20;
  __device__ static void decode8(const uint8_t* b, int j, float* o) {
    const float d = ld_half(b), m = ld_half(b + 2);
    const uint8_t* qs = b + 4 + (j & 15);
    const int shift = j < 16 ? 0 : 4;
#pragma unroll
    for (int i = 0; i < 8; ++i) o[i] = d * float((qs[i] >> shift) & 15) + m;
  }
};

}  // namespace sinkserve::cuda
