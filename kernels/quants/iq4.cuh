// CUDA decoding of IQ4_NL and IQ4_XS (layouts and CPU variants: iq4.cpp).
#pragma once
#include "kernels/quants/device.cuh"

namespace sinkserve::cuda {

static __constant__ int8_t kIq4Grid[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};

__device__ __forceinline__ float iq4_grid(int code) { return float(kIq4Grid[code]); }

template <>
struct DeviceType<DType::IQ4_NL> {
  static constexpr int kValues = 32, kBytes = 18;
  __device__ static void decode8(const uint8_t* b, int j, float* o) {
    const float d = ld_half(b);
    const uint8_t* qs = b + 2 + (j & 15);
#pragma unroll
    for (int i = 0; i < 8; ++i) o[i] = d * iq4_grid((qs[i] >> (j < 16 ? 0 : 4)) & 15);
  }
};

template <>
struct DeviceType<DType::IQ4_XS> {
  static constexpr int kValues = 256, kBytes = 136;
  __device__ static void decode8(const uint8_t* b, int v, float* o) {
    const int g = v / 32, l = v % 32;
    const int sh = b[2] | b[3] << 8;
    const int ls = ((b[4 + g / 2] >> (4 * (g % 2))) & 15) | ((sh >> (2 * g)) & 3) << 4;
    const float dl = ld_half(b) * float(ls - 32);
    const uint8_t* qs = b + 8 + 16 * g + (l & 15);
#pragma unroll
    for (int i = 0; i < 8; ++i) o[i] = dl * iq4_grid((qs[i] >> (l < 16 ? 0 : 4)) & 15);
  }
};

}  // namespace sinkserve::cuda
