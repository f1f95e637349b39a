// CUDA decoding of Q3_K (layout and CPU variants: q3_k.cpp).
#pragma once
#include "kernels/quants/device.cuh"

namespace sinkserve::cuda {

template <>
struct DeviceType<DType::Q3_K> {
  static constexpr int kValues = 256, kBytes = 110;
  __device__ static void decode8(const uint8_t* b, int v, float* o) {
    const int h = v / 128, j = v % 128 / 32, l = v % 32, g = 8 * h + 2 * j + l / 16;
    const uint8_t* sc = b + 96;
    const int s = ((sc[g % 8] >> (4 * (g / 8))) & 15) | ((sc[8 + g % 4] >> (2 * (g / 4))) & 3) << 4;
    const float dl = ld_half(b + 108) * float(s - 32);
    const uint8_t *hm = b + l, *qs = b + 32 + 32 * h + l;
#pragma unroll
    for (int i = 0; i < 8; ++i)
      o[i] = dl * float(((qs[i] >> (2 * j)) & 3) - (((hm[i] >> (4 * h + j)) & 1) ? 0 : 4));
  }
};

}  // namespace sinkserve::cuda
