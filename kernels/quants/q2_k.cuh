// CUDA decoding of Q2_K (layout and CPU variants: q2_k.cpp). Eight consecutive values share
// their half h, their shift j and their 16-value group.
#pragma once
#include "kernels/quants/device.cuh"

namespace sinkserve::cuda {

template <>
struct DeviceType<DType::Q2_K> {
  static constexpr int kValues = 256, kBytes = 84;
  __device__ static void decode8(const uint8_t* b, int v, float* o) {
    const int h = v / 128, j = v % 128 / 32, l = v % 32;
    const uint8_t sc = b[8 * h + 2 * j + l / 16];
    const float dl = ld_half(b + 80) * float(sc & 15), ml = ld_half(b + 82) * float(sc >> 4);
    const uint8_t* qs = b + 16 + 32 * h + l;
#pragma unroll
    for (int i = 0; i < 8; ++i) o[i] = dl * float((qs[i] >> (2 * j)) & 3) - ml;
  }
};

}  // namespace sinkserve::cuda
